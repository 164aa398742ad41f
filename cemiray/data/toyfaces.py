"""ToyFaces: a procedural world of face-like RGB images with real identity structure.

Why: face recognition and the similarity-conditioned generator must be learnable and measurable
on a CPU in seconds. Each identity is a fixed draw of face parameters (shape, colours, features,
hair, marks) whose distributions shift with known attributes (group, age, sex). Each image adds
nuisances (pose, expression, light, background, occluders, blur, noise) whose amplitudes the
`difficulty` knob scales; difficulty 0 is the canonical frontal image.

Pixels are a pure function of (world seed, size, difficulty, identity, sample): every pixel
operation is elementwise IEEE arithmetic (no transcendental functions over pixel arrays), so an
image is bit-identical whatever batch it is rendered in.

Coordinates: the image spans [-1, 1] on both axes, y pointing down. The face lives in its own
frame (u, v) that pose (shift, scale, roll) maps into the image; yaw shifts features by
depth * tan(yaw) and foreshortens them by cos(yaw). Shapes are signed distances turned into
antialiased coverage one pixel wide.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

MIN_SIZE = 16
MAX_SIZE = 112
NEW_IDENTITY_OFFSET = 1_000_000

HAIR_STYLES = ("crop", "side_part", "long", "curly", "bald", "bun")
FACIAL_HAIR_STYLES = ("none", "stubble", "full_beard", "goatee", "moustache")

# SeedSequence pads short entropy with zeros, so [seed, id] and [seed, id, 0] would collide
# without a non-zero tag at the end of the per-image streams.
_NUISANCE_TAG = 1

# Pixels per (n, H*W) work array: small enough to stay in cache, large enough to amortise the
# per-call overhead of numpy.
_CHUNK_PIXELS = 1 << 16

_IDENTITY_UNIFORMS = (
    "group", "age", "sex", "hair_colour", "eye_colour", "hair_style", "facial_hair",
    "lipstick", "grey_present", "grey_amount", "mole_count", "mole1_x", "mole1_y", "mole2_x",
    "mole2_y", "freckles", "freckle_density", "freckle_phase_x", "freckle_phase_y", "scar",
    "scar_x", "scar_y", "scar_angle", "wrinkles", "part_side", "facial_hair_density",
)
_IDENTITY_NORMALS = (
    "tone", "redness", "hair_shade", "face_width", "face_height", "jaw", "eye_y", "eye_spacing",
    "eye_width", "eye_aspect", "iris", "eye_tilt", "brow_gap", "brow_length", "brow_thickness",
    "brow_arch", "brow_tilt", "nose_length", "nose_width", "nose_tip", "mouth_gap",
    "mouth_width", "lip_thickness", "mouth_curve", "ear_size", "ear_out", "hair_volume",
    "hairline", "hair_part", "hair_length", "mole_size", "scar_length",
)
_NUISANCE_UNIFORMS = (
    "yaw_a", "yaw_b", "roll_a", "roll_b", "shift_x", "shift_y", "scale", "smile", "eye_open",
    "brow_raise", "gaze_x", "gaze_y", "light_angle", "light_strength", "bg_r", "bg_g", "bg_b",
    "bg2_r", "bg2_g", "bg2_b", "bg_angle", "bg_gradient", "shirt_r", "shirt_g", "shirt_b",
    "glasses", "glasses_dark", "frame_shade", "hat", "hat_r", "hat_g", "hat_b", "hat_depth",
    "mask", "mask_colour", "blur", "noise",
)

_AGE_PROBS = np.array([0.3, 0.45, 0.25])
# Skin palette from light to dark; `skin_tone` in [0, 1] interpolates along it.
_SKIN = np.array([
    [0.98, 0.87, 0.78], [0.91, 0.73, 0.60], [0.78, 0.56, 0.41], [0.56, 0.38, 0.26],
    [0.34, 0.22, 0.15],
])
_GROUP_TONE = np.array([0.12, 0.37, 0.62, 0.87])
_HAIR = np.array([
    [0.93, 0.84, 0.62], [0.80, 0.62, 0.32], [0.64, 0.28, 0.12], [0.50, 0.34, 0.20],
    [0.27, 0.17, 0.10], [0.08, 0.065, 0.06],
])
_GROUP_HAIR_PROBS = np.array([
    [0.22, 0.25, 0.15, 0.23, 0.10, 0.05],
    [0.03, 0.07, 0.10, 0.30, 0.35, 0.15],
    [0.00, 0.02, 0.03, 0.15, 0.40, 0.40],
    [0.00, 0.00, 0.02, 0.08, 0.30, 0.60],
])
_EYE = np.array([
    [0.28, 0.50, 0.78], [0.32, 0.56, 0.34], [0.55, 0.44, 0.22], [0.40, 0.24, 0.11],
    [0.17, 0.10, 0.06],
])
_GROUP_EYE_PROBS = np.array([
    [0.35, 0.20, 0.20, 0.20, 0.05],
    [0.10, 0.15, 0.25, 0.35, 0.15],
    [0.02, 0.05, 0.13, 0.40, 0.40],
    [0.00, 0.02, 0.08, 0.35, 0.55],
])
# Hair style tendencies by sex (rows) over HAIR_STYLES; old sex-0 identities go bald more often.
_STYLE_PROBS = np.array([
    [0.36, 0.28, 0.05, 0.15, 0.10, 0.06],
    [0.06, 0.16, 0.40, 0.15, 0.02, 0.21],
])
# Per style: cap volume, back-hair length (v below face centre, -1 none), hairline (fraction of
# face height below its top), hairline tilt, hairline curvature, cap height factor, bun radius,
# curl amplitude, sideburn bottom (v relative to the eye line).
_STYLE_VOLUME = np.array([0.035, 0.06, 0.07, 0.16, 0.02, 0.04])
_STYLE_BACK = np.array([-1.0, -1.0, 0.85, 0.30, -1.0, -1.0])
_STYLE_HAIRLINE = np.array([0.26, 0.33, 0.30, 0.30, -0.40, 0.22])
_STYLE_PART = np.array([0.0, 0.55, 0.12, 0.0, 0.0, 0.0])
_STYLE_CURVE = np.array([0.45, 0.2, 0.9, 0.7, 0.0, 0.6])
_STYLE_CAP = np.array([0.84, 0.86, 0.86, 0.88, 0.55, 0.84])
_STYLE_BUN = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.16])
_STYLE_CURL = np.array([0.0, 0.0, 0.0, 0.045, 0.0, 0.0])
_STYLE_SIDEBURN = np.array([0.10, 0.10, 0.32, 0.22, 0.06, 0.08])
# Facial-hair style tendencies: sex-0 young, sex-0 adult/old, sex 1; over FACIAL_HAIR_STYLES.
_FACIAL_HAIR_PROBS = np.array([
    [0.70, 0.12, 0.06, 0.05, 0.07],
    [0.45, 0.14, 0.17, 0.11, 0.13],
    [1.00, 0.00, 0.00, 0.00, 0.00],
])
_FACIAL_HAIR_ALPHA = np.array([0.0, 0.35, 0.95, 0.95, 0.0])
_FACIAL_HAIR_MOUSTACHE = np.array([0, 0, 1, 1, 1])
_FACIAL_HAIR_CHIN_ONLY = np.array([0, 0, 0, 1, 0])
_MOLE_COUNT_PROBS = np.array([0.55, 0.30, 0.15])
_GREY = np.array([0.80, 0.80, 0.79])
_MASK_COLOURS = np.array([[0.93, 0.94, 0.95], [0.62, 0.78, 0.90], [0.12, 0.12, 0.14]])
_NEUTRAL_BG = np.array([0.55, 0.55, 0.56])
_NEUTRAL_SHIRT = np.array([0.30, 0.34, 0.42])

# Depths (face units, toward the camera) that set how far yaw shifts each feature.
_DEPTH_EYES = 0.20
_DEPTH_NOSE = 0.36
_DEPTH_MOUTH = 0.22
_DEPTH_HEAD = 0.04
_DEPTH_EARS = -0.12

# Fine skin patterns (face units): freckle lattice and dot radius, forehead-line spacing, and
# their mean coverage, used where the resolution cannot show them.
_FRECKLE_CELL = 0.075
_FRECKLE_R = 0.011
_FRECKLE_MEAN = math.pi * _FRECKLE_R**2 / _FRECKLE_CELL**2
_WRINKLE_PERIOD = 0.085
_WRINKLE_MEAN = 0.125

_F32 = np.float32


# --------------------------------------------------------------------------- argument checks


def _check_index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


# --------------------------------------------------------------------------- random draws


@lru_cache(maxsize=1 << 15)
def _identity_draws(seed: int, identity: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, identity]))
    u = rng.random(len(_IDENTITY_UNIFORMS))
    z = np.clip(rng.standard_normal(len(_IDENTITY_NORMALS)), -2.5, 2.5)
    u.flags.writeable = False
    z.flags.writeable = False
    return u, z


def _nuisance_rng(seed: int, identity: int, sample: int) -> np.random.Generator:
    """The image's generator: it draws the nuisance uniforms first, then the pixel noise."""
    return np.random.default_rng(np.random.SeedSequence([seed, identity, sample, _NUISANCE_TAG]))


def _categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Index drawn from per-row probabilities `probs` (n, k) by uniforms `u` (n,)."""
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return (u[:, None] >= cum[:, :-1]).sum(axis=1).astype(np.int64)


def _palette(colours: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation along a palette (k, 3) at positions t in [0, 1]; (n, 3)."""
    pos = np.clip(t, 0.0, 1.0) * (len(colours) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(colours) - 2)
    frac = (pos - lo)[:, None]
    return colours[lo] * (1.0 - frac) + colours[lo + 1] * frac


def _trig(values: np.ndarray, fn) -> np.ndarray:
    """Elementwise libm trig so results never depend on the batch length (SIMD paths may)."""
    return np.array([fn(float(x)) for x in values], dtype=np.float64)


def _put_rgb(table: dict, name: str, rgb: np.ndarray) -> None:
    for i, channel in enumerate("rgb"):
        key = f"{name}_{channel}"
        if key in table:
            raise KeyError(f"colour channel {key!r} would overwrite a parameter")
        table[key] = rgb[:, i]


def _identity_table(u: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
    """All per-identity parameters, vectorised over identities (rows of u and z)."""
    U = {k: u[:, i] for i, k in enumerate(_IDENTITY_UNIFORMS)}
    Z = {k: z[:, i] for i, k in enumerate(_IDENTITY_NORMALS)}
    n = u.shape[0]
    group = np.minimum((U["group"] * 4).astype(np.int64), 3)
    age = _categorical(U["age"], np.broadcast_to(_AGE_PROBS, (n, 3)))
    sex = (U["sex"] >= 0.5).astype(np.int64)
    male = (sex == 0).astype(np.float64)
    young = (age == 0).astype(np.float64)
    old = (age == 2).astype(np.float64)
    t: dict[str, np.ndarray] = {"group": group, "age": age, "sex": sex}

    tone = np.clip(_GROUP_TONE[group] + 0.08 * Z["tone"], 0.0, 1.0)
    t["skin_tone"] = tone
    skin = _palette(_SKIN, tone) * (1.0 + 0.035 * Z["redness"][:, None] * np.array([1, -0.6, -0.8]))
    _put_rgb(t, "skin", np.clip(skin, 0.0, 1.0))

    hair_idx = _categorical(U["hair_colour"], _GROUP_HAIR_PROBS[group])
    hair = np.clip(_HAIR[hair_idx] * (1.0 + 0.12 * Z["hair_shade"][:, None]), 0.0, 1.0)
    grey_p = 0.85 * old + 0.15 * (age == 1)
    grey_level = 0.25 + 0.7 * U["grey_amount"] * (0.4 + 0.6 * old)
    grey = np.where(U["grey_present"] < grey_p, grey_level, 0.0)
    t["hair_colour"] = hair_idx
    t["hair_grey"] = grey
    _put_rgb(t, "hair", hair + grey[:, None] * (_GREY - hair))
    _put_rgb(t, "brow", hair * 0.8 + 0.5 * grey[:, None] * (_GREY * 0.8 - hair * 0.8))

    eye_idx = _categorical(U["eye_colour"], _GROUP_EYE_PROBS[group])
    t["eye_colour"] = eye_idx
    _put_rgb(t, "iris", _EYE[eye_idx])

    w = np.clip(0.50 + 0.035 * Z["face_width"] + 0.02 * male - 0.01 * young, 0.42, 0.60)
    h = np.clip(0.66 + 0.04 * Z["face_height"] + 0.01 * male, 0.56, 0.76)
    t["face_width"], t["face_height"] = w, h
    t["jaw"] = np.clip(0.33 + 0.08 * Z["jaw"] - 0.10 * male - 0.03 * young, 0.08, 0.55)

    t["eye_y"] = -0.09 + 0.03 * Z["eye_y"]
    t["eye_dx"] = w * (0.38 + 0.035 * Z["eye_spacing"])
    eye_w = np.clip(0.085 + 0.011 * Z["eye_width"] + 0.01 * young - 0.006 * old, 0.06, 0.12)
    t["eye_w"] = eye_w
    t["eye_h"] = eye_w * np.clip(0.55 + 0.09 * Z["eye_aspect"], 0.35, 0.8)
    t["iris_radius"] = t["eye_h"] * np.clip(0.92 + 0.08 * Z["iris"], 0.7, 1.15)
    t["eye_tilt"] = 0.14 * Z["eye_tilt"]

    t["brow_gap"] = np.clip(0.075 + 0.014 * Z["brow_gap"], 0.045, 0.11)
    t["brow_len"] = eye_w * np.clip(1.25 + 0.14 * Z["brow_length"], 0.95, 1.6)
    t["brow_thick"] = np.clip(0.021 + 0.005 * Z["brow_thickness"] + 0.009 * male, 0.01, 0.04)
    t["brow_arch"] = np.clip(0.022 + 0.012 * Z["brow_arch"], -0.005, 0.05)
    t["brow_tilt"] = 0.15 * Z["brow_tilt"]

    t["nose_bottom"] = t["eye_y"] + np.clip(0.19 + 0.03 * Z["nose_length"], 0.12, 0.27)
    t["nose_w"] = np.clip(0.058 + 0.012 * Z["nose_width"] + 0.006 * male, 0.035, 0.09)
    t["nose_tip"] = np.clip(0.035 + 0.008 * Z["nose_tip"], 0.02, 0.055)

    t["mouth_y"] = t["nose_bottom"] + np.clip(0.11 + 0.018 * Z["mouth_gap"], 0.07, 0.16)
    t["mouth_w"] = np.clip(0.13 + 0.018 * Z["mouth_width"], 0.09, 0.18)
    t["lip_thickness"] = np.clip(0.027 + 0.006 * Z["lip_thickness"] + 0.006 * (1 - male) - 0.006 * old,
                       0.012, 0.045)
    t["mouth_curve"] = 0.012 * Z["mouth_curve"]
    lip = skin * np.array([0.80, 0.58, 0.58])
    lipstick = ((U["lipstick"] < 0.3) & (sex == 1)).astype(np.float64)[:, None]
    _put_rgb(t, "lip", np.clip(lip + 0.55 * lipstick * (np.array([0.70, 0.12, 0.20]) - lip), 0, 1))

    t["ear_size"] = np.clip(0.085 + 0.012 * Z["ear_size"] + 0.008 * old, 0.06, 0.12)
    t["ear_out"] = 0.012 * Z["ear_out"]
    t["ear_y"] = t["eye_y"] + 0.09

    style = _categorical(U["hair_style"], _STYLE_PROBS[sex])
    bald_boost = ((age == 2) & (sex == 0) & (U["hair_style"] > 0.8)).astype(np.int64)
    style = np.where(bald_boost == 1, 4, style)
    t["hair_style"] = style
    t["hair_volume"] = np.clip(_STYLE_VOLUME[style] * (1.0 + 0.25 * Z["hair_volume"]), 0.01, 0.25)
    back = _STYLE_BACK[style]
    t["hair_back"] = np.where(back > 0, back * (1.0 + 0.2 * Z["hair_length"]), back)
    receding = 0.08 * old * male
    t["hairline"] = _STYLE_HAIRLINE[style] + 0.04 * Z["hairline"] - receding
    side = np.where(U["part_side"] < 0.5, -1.0, 1.0)
    t["hair_part"] = side * _STYLE_PART[style] * (1.0 + 0.3 * Z["hair_part"])
    t["hair_curve"] = _STYLE_CURVE[style]
    t["hair_cap"] = _STYLE_CAP[style]
    t["hair_bun"] = _STYLE_BUN[style]
    t["hair_bun_y"] = np.where(t["hair_bun"] > 0, -h - 0.6 * t["hair_bun"], 10.0)
    t["hair_curl"] = _STYLE_CURL[style]
    t["sideburn"] = _STYLE_SIDEBURN[style]

    fh_row = np.where(sex == 1, 2, np.where(age == 0, 0, 1))
    facial = _categorical(U["facial_hair"], _FACIAL_HAIR_PROBS[fh_row])
    t["facial_hair"] = facial
    t["beard"] = _FACIAL_HAIR_ALPHA[facial] * (0.75 + 0.25 * U["facial_hair_density"])
    t["beard_chin_only"] = _FACIAL_HAIR_CHIN_ONLY[facial]
    t["moustache"] = _FACIAL_HAIR_MOUSTACHE[facial]

    moles = _categorical(U["mole_count"], np.broadcast_to(_MOLE_COUNT_PROBS, (n, 3)))
    t["mole_count"] = moles
    mole_r = np.clip(0.014 + 0.004 * Z["mole_size"], 0.008, 0.024)
    for k in (1, 2):
        t[f"mole{k}_radius"] = np.where(moles >= k, mole_r, 0.0)
        t[f"mole{k}_x"] = w * 0.75 * (2.0 * U[f"mole{k}_x"] - 1.0)
        t[f"mole{k}_y"] = h * (0.7 * U[f"mole{k}_y"] - 0.3)
    freckle_p = 0.08 + 0.25 * (hair_idx == 2) + 0.05 * (group == 0)
    t["freckles"] = np.where(U["freckles"] < freckle_p, 0.45 + 0.5 * U["freckle_density"], 0.0)
    t["freckle_phase_x"] = U["freckle_phase_x"]
    t["freckle_phase_y"] = U["freckle_phase_y"]
    t["scar"] = (U["scar"] < 0.07).astype(np.int64)
    t["scar_x"] = w * 0.6 * (2.0 * U["scar_x"] - 1.0)
    t["scar_y"] = h * (0.5 * U["scar_y"] - 0.25)
    t["scar_angle"] = math.pi * U["scar_angle"]
    t["scar_len"] = np.clip(0.08 + 0.02 * Z["scar_length"], 0.05, 0.12)
    t["wrinkles"] = np.where(old > 0, 0.6 + 0.4 * U["wrinkles"], (age == 1) * 0.3 * U["wrinkles"])
    return t


def _nuisance_table(u: np.ndarray, difficulty: float) -> dict[str, np.ndarray]:
    """Per-image nuisance values, vectorised; every amplitude is scaled by `difficulty`."""
    U = {k: u[:, i] for i, k in enumerate(_NUISANCE_UNIFORMS)}
    d = float(difficulty)
    mix = min(d, 1.0)
    t: dict[str, np.ndarray] = {}
    t["yaw"] = d * 40.0 * (U["yaw_a"] + U["yaw_b"] - 1.0)
    t["roll"] = d * 15.0 * (U["roll_a"] + U["roll_b"] - 1.0)
    t["shift_x"] = d * 0.10 * (2.0 * U["shift_x"] - 1.0)
    t["shift_y"] = d * 0.08 * (2.0 * U["shift_y"] - 1.0)
    t["scale"] = 1.0 + d * 0.10 * (2.0 * U["scale"] - 1.0)
    t["smile"] = d * (1.3 * U["smile"] - 0.3)
    t["eye_open"] = np.clip(1.0 - d * 0.8 * U["eye_open"] * U["eye_open"] * U["eye_open"], 0.1, 1.0)
    t["brow_raise"] = d * (2.0 * U["brow_raise"] - 1.0)
    t["gaze_x"] = d * 0.6 * (2.0 * U["gaze_x"] - 1.0)
    t["gaze_y"] = d * 0.3 * (2.0 * U["gaze_y"] - 1.0)
    angle = 2.0 * math.pi * U["light_angle"]
    t["light_x"] = _trig(angle, math.cos)
    t["light_y"] = _trig(angle, math.sin)
    t["light_strength"] = d * 0.45 * U["light_strength"]
    for name, raw in (("bg", ("bg_r", "bg_g", "bg_b")), ("bg2", ("bg2_r", "bg2_g", "bg2_b"))):
        rgb = 0.1 + 0.8 * np.stack([U[k] for k in raw], axis=1)
        _put_rgb(t, name, _NEUTRAL_BG + mix * (rgb - _NEUTRAL_BG))
    bg_angle = 2.0 * math.pi * U["bg_angle"]
    t["bg_gradient_x"] = mix * U["bg_gradient"] * _trig(bg_angle, math.cos)
    t["bg_gradient_y"] = mix * U["bg_gradient"] * _trig(bg_angle, math.sin)
    shirt = 0.08 + 0.8 * np.stack([U["shirt_r"], U["shirt_g"], U["shirt_b"]], axis=1)
    _put_rgb(t, "shirt", _NEUTRAL_SHIRT + mix * (shirt - _NEUTRAL_SHIRT))
    t["glasses"] = (U["glasses"] < min(0.22 * d, 0.9)).astype(np.int64)
    t["glasses_dark"] = t["glasses"] * (U["glasses_dark"] < 0.3)
    shade = 0.05 + 0.5 * U["frame_shade"]
    _put_rgb(t, "frame", np.stack([shade, shade * 0.9, shade * 0.8], axis=1))
    t["hat"] = (U["hat"] < min(0.12 * d, 0.9)).astype(np.int64)
    _put_rgb(t, "hat", 0.05 + 0.85 * np.stack([U["hat_r"], U["hat_g"], U["hat_b"]], axis=1))
    t["hat_depth"] = 0.30 + 0.15 * U["hat_depth"]
    t["mask"] = (U["mask"] < min(0.08 * d, 0.9)).astype(np.int64)
    _put_rgb(t, "mask", _MASK_COLOURS[np.minimum((U["mask_colour"] * 3).astype(np.int64), 2)])
    t["blur"] = d * np.maximum(0.0, 2.0 * U["blur"] - 1.0)
    t["noise_std"] = d * 0.035 * U["noise"]
    return t


def _rows(table: dict[str, np.ndarray]) -> list[dict]:
    """The rows of a table as JSON-serialisable dicts (python ints and floats)."""
    keys = list(table)
    columns = [table[k].tolist() for k in keys]
    return [dict(zip(keys, values)) for values in zip(*columns)]


# --------------------------------------------------------------------------- rendering


def _cov(dist: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a signed distance (negative inside), one pixel wide."""
    return np.clip(0.5 - dist * aa, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse centred at the origin."""
    return (np.sqrt((x / rx) ** 2 + (y / ry) ** 2) - 1.0) * np.minimum(rx, ry)


def _segment(x: np.ndarray, y: np.ndarray, ax, ay, bx, by) -> np.ndarray:
    """Distance to the segment from (ax, ay) to (bx, by)."""
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2)


def _fine_pattern(pattern: np.ndarray, mean: float, period: float, aa: np.ndarray) -> np.ndarray:
    """Fade a repeating pattern to its mean where pixels are too coarse to resolve its period:
    point-sampling it there would alias into moire."""
    contrast = np.clip((period * aa - _F32(2.0)) * _F32(1.0 / 3.0), 0.0, 1.0)
    return _F32(mean) + contrast * (pattern - _F32(mean))


def _pos(x: np.ndarray) -> np.ndarray:
    """max(x, 0); a two-sided clip, because numpy's maximum against a scalar is not vectorised."""
    return np.clip(x, 0.0, 1e9)


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1, peaking at integers."""
    return np.abs(2.0 * (x - np.floor(x)) - 1.0)


class _Frame:
    """Face-frame coordinates and per-image parameters of one chunk of images. Pixel arrays
    are flat, (n, H*W): numpy then runs long inner loops instead of one per image row."""

    def __init__(self, size: int, ident: dict, nuis: dict):
        self.ident, self.nuis = ident, nuis
        n = len(nuis["yaw"])
        grid = (np.arange(size, dtype=_F32) + _F32(0.5)) * _F32(2.0 / size) - _F32(1.0)
        xx, yy = np.meshgrid(grid, grid)
        self.x, self.y = xx.reshape(1, -1), yy.reshape(1, -1)
        roll = np.radians(nuis["roll"])
        yaw = np.radians(nuis["yaw"])
        cr, sr = self.col(_trig(roll, math.cos)), self.col(_trig(roll, math.sin))
        scale = self.col(nuis["scale"])
        xs = self.x - self.col(nuis["shift_x"])
        ys = self.y - self.col(nuis["shift_y"])
        self.u = (cr * xs + sr * ys) / scale
        self.v = (cr * ys - sr * xs) / scale
        self.cos_yaw = self.col(_trig(yaw, math.cos))
        self.tan_yaw = self.col(_trig(yaw, math.tan))
        self.uf = self.u / self.cos_yaw
        self.aa = scale * _F32(size / 2.0)
        self.n = n

    @staticmethod
    def col(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=_F32).reshape(-1, 1)

    def p(self, name: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Identity or nuisance parameter `name` as (n, 1) float32, optionally a subset."""
        table = self.ident if name in self.ident else self.nuis
        values = table[name] if idx is None else table[name][idx]
        return self.col(values)

    def rgb(self, name: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Colour parameter `name` as (3, n, 1) float32, planar like the canvas."""
        return np.stack([self.p(f"{name}_{c}", idx) for c in "rgb"])

    def shift(self, depth: float, idx: np.ndarray | None = None) -> np.ndarray:
        """Horizontal offset of a feature at `depth` under the image's yaw."""
        tan = self.tan_yaw if idx is None else self.tan_yaw[idx]
        return tan * _F32(depth)


def _const(r: float, g: float, b: float) -> np.ndarray:
    """A fixed colour shaped (3, 1, 1) to broadcast over a planar canvas."""
    return np.array([r, g, b], dtype=_F32).reshape(3, 1, 1)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Composite `colour` over the planar canvas img (3, n, P) with coverage alpha (n, P).
    Planar, because numpy broadcasts slowly over a trailing axis of length 3."""
    tmp = colour - img
    tmp *= alpha
    img += tmp


def _paint_subset(img: np.ndarray, idx: np.ndarray, alpha: np.ndarray, colour: np.ndarray):
    sub = img[:, idx]
    _paint(sub, alpha, colour)
    img[:, idx] = sub


def _where(mask: np.ndarray) -> np.ndarray | None:
    """Indices of images a rare layer applies to; None when there are none."""
    idx = np.flatnonzero(mask)
    return idx if idx.size else None


def _render_chunk(size: int, ident: dict, nuis: dict, rngs: list) -> np.ndarray:
    """(n, size, size, 3) uint8 images; `rngs` are the images' nuisance generators, which go on
    to draw the pixel noise."""
    f = _Frame(size, ident, nuis)
    u, v, uf, aa, p = f.u, f.v, f.uf, f.aa, f.p
    w, h = p("face_width"), p("face_height")

    # Background: two colours along a linear gradient in image coordinates.
    ramp = np.clip(0.5 + p("bg_gradient_x") * f.x + p("bg_gradient_y") * f.y, 0.0, 1.0)
    bg0 = f.rgb("bg")
    img = bg0 + ramp * (f.rgb("bg2") - bg0)

    skin = f.rgb("skin")
    # Neck, then the shirt over the shoulders.
    neck = np.maximum(np.abs(u) - w * _F32(0.5), _F32(0.1) - v)
    _paint(img, _cov(neck, aa), skin * _F32(0.78))
    shirt = _ellipse(u, v - (h + _F32(0.58)), w * _F32(2.1), _F32(0.52))
    _paint(img, _cov(shirt, aa), f.rgb("shirt"))

    # Hair behind the head: a cap over the skull (bumpy when curly), a long fall, a bun.
    hair = f.rgb("hair")
    vol = p("hair_volume")
    hu = u - f.shift(_DEPTH_HEAD)
    cap_ry = h * p("hair_cap") + vol
    cap = _ellipse(hu, v + h * _F32(0.2), w + vol, cap_ry)
    curl = p("hair_curl")
    cap = cap - curl * (_tri(hu * _F32(7.0)) + _tri(v * _F32(7.0)) - _F32(1.0))
    back_bottom = p("hair_back")
    corner = _F32(0.15)
    gx = _pos(np.abs(hu) - (w + vol * _F32(0.7) - corner))
    gy = _pos(v - (back_bottom - corner))
    fall = np.maximum(np.sqrt(gx * gx + gy * gy) - corner, -v)
    bun_r = p("hair_bun")
    bun = _ellipse(hu, v - p("hair_bun_y"), bun_r + _F32(1e-3), bun_r + _F32(1e-3))
    _paint(img, _cov(np.minimum(np.minimum(cap, fall), bun), aa), hair * _F32(0.82))

    # Ears sit at the sides and slide the other way under yaw, hiding behind the face.
    ear_x = np.abs(u - f.shift(_DEPTH_EARS)) - (w + p("ear_out") - _F32(0.01))
    size_e = p("ear_size")
    ear = _ellipse(ear_x, v - p("ear_y"), size_e * _F32(0.55), size_e)
    _paint(img, _cov(ear, aa), skin * _F32(0.9))

    # Face: an ellipse narrowing towards the chin, shaded darker towards its rim.
    fy = v
    taper = np.clip(fy / h, 0.0, 1.0)
    fx = (u - f.shift(_DEPTH_HEAD)) / (_F32(1.0) - p("jaw") * taper * taper)
    radius = np.sqrt((fx / w) ** 2 + (fy / h) ** 2)
    face_d = (radius - _F32(1.0)) * np.minimum(w, h)
    face_a = _cov(face_d, aa)
    _paint(img, face_a, skin)
    rim = face_a * np.clip((radius - _F32(0.55)) * _F32(0.45), 0.0, 0.2)
    img *= _F32(1.0) - rim

    _render_marks(f, img, face_a)
    _render_facial_hair(f, img, face_a)
    _render_eyes(f, img)
    _render_nose_mouth(f, img)

    # Hair in front: inside the cap, above the hairline (tilted by a side part, curving down
    # towards the temples) or at the sides above the sideburn bottom.
    hx = uf - f.shift(_DEPTH_HEAD)
    line = -h + p("hairline") * h + p("hair_part") * hx + p("hair_curve") * hx * hx
    above = v - line
    sides = np.maximum(w * _F32(0.84) - np.abs(hu), v - (p("eye_y") + p("sideburn")))
    front = np.maximum(cap, np.minimum(above, sides))
    _paint(img, _cov(front, aa), hair)

    _render_occluders(f, img, face_d, cap, cap_ry)

    # Light: a multiplicative gradient across the image.
    gain = _F32(1.0) + p("light_strength") * (p("light_x") * f.x + p("light_y") * f.y)
    img *= gain

    _blur(img, nuis["blur"], size)
    for i in np.flatnonzero(nuis["noise_std"] > 0):
        noise = rngs[i].standard_normal((3, size * size), dtype=_F32)
        img[:, i] += noise * _F32(nuis["noise_std"][i])
    np.clip(img, 0.0, 1.0, out=img)
    out = (np.moveaxis(img, 0, -1) * _F32(255.0) + _F32(0.5)).astype(np.uint8)
    return out.reshape(-1, size, size, 3)


def _render_marks(f: _Frame, img: np.ndarray, face_a: np.ndarray) -> None:
    """Freckles, moles, a scar and wrinkles: rare layers drawn only on the images having them."""
    idx = _where(f.ident["freckles"] > 0)
    if idx is not None:
        uf, v, aa, p = f.uf[idx], f.v[idx], f.aa[idx], f.p
        x = np.abs(uf - f.shift(_DEPTH_EYES, idx)) - p("eye_dx", idx)
        cheek = _ellipse(x, v - (p("eye_y", idx) + _F32(0.13)), _F32(0.13), _F32(0.075))
        cell = _F32(_FRECKLE_CELL)
        gx = uf / cell + p("freckle_phase_x", idx)
        gy = v / cell + p("freckle_phase_y", idx)
        d = np.sqrt((_F32(1.0) - _tri(gx)) ** 2 + (_F32(1.0) - _tri(gy)) ** 2) * (cell * _F32(0.5))
        dots = _fine_pattern(_cov(d - _F32(_FRECKLE_R), aa), _FRECKLE_MEAN, cell, aa)
        alpha = dots * np.clip(-cheek * _F32(15.0), 0.0, 1.0) * p("freckles", idx) * face_a[idx]
        _paint_subset(img, idx, alpha * _F32(0.6), f.rgb("skin", idx) * _F32(0.62))

    idx = _where(f.ident["mole1_radius"] > 0)
    if idx is not None:
        uf, v, aa, p = f.uf[idx], f.v[idx], f.aa[idx], f.p
        s = f.shift(_DEPTH_MOUTH, idx)
        alpha = np.zeros_like(uf)
        for k in (1, 2):
            r = p(f"mole{k}_radius", idx)
            d = np.sqrt((uf - s - p(f"mole{k}_x", idx)) ** 2 + (v - p(f"mole{k}_y", idx)) ** 2)
            alpha = np.maximum(alpha, _cov(d - r, aa) * (r > 0))
        colour = _const(0.25, 0.15, 0.10)
        _paint_subset(img, idx, alpha * face_a[idx] * _F32(0.85), colour)

    idx = _where(f.ident["scar"] > 0)
    if idx is not None:
        uf, v, aa, p = f.uf[idx], f.v[idx], f.aa[idx], f.p
        ang = f.ident["scar_angle"][idx]
        half = f.ident["scar_len"][idx] / 2.0
        dx, dy = f.col(_trig(ang, math.cos) * half), f.col(_trig(ang, math.sin) * half)
        cx = p("scar_x", idx) + f.shift(_DEPTH_EYES, idx)
        cy = p("scar_y", idx)
        d = _segment(uf, v, cx - dx, cy - dy, cx + dx, cy + dy) - _F32(0.012)
        colour = f.rgb("skin", idx) * _const(1.0, 0.8, 0.8) + _F32(0.08)
        _paint_subset(img, idx, _cov(d, aa) * face_a[idx] * _F32(0.9), colour)

    idx = _where(f.ident["wrinkles"] > 0)
    if idx is not None:
        uf, v, aa, p = f.uf[idx], f.v[idx], f.aa[idx], f.p
        top = -p("face_height", idx) * _F32(0.8)
        bottom = p("eye_y", idx) - p("brow_gap", idx) - _F32(0.07)
        band = np.maximum(np.maximum(np.abs(uf) - p("face_width", idx) * _F32(0.5), top - v),
                          v - bottom)
        period = _F32(_WRINKLE_PERIOD)
        lines = np.clip((_tri(v / period) - _F32(0.75)) * _F32(4.0), 0.0, 1.0)
        lines = _fine_pattern(lines, _WRINKLE_MEAN, period, aa)
        forehead = lines * np.clip(-band * _F32(20.0), 0.0, 1.0)
        s = f.shift(_DEPTH_NOSE * 0.6, idx)
        x = np.abs(uf - s)
        fold = _segment(x, v, p("nose_w", idx) + _F32(0.03), p("nose_bottom", idx) - _F32(0.02),
                        p("mouth_w", idx) + _F32(0.02), p("mouth_y", idx) + _F32(0.03))
        alpha = np.maximum(forehead * _F32(0.55), _cov(fold - _F32(0.008), aa) * _F32(0.6))
        alpha *= p("wrinkles", idx) * face_a[idx]
        _paint_subset(img, idx, alpha, f.rgb("skin", idx) * _F32(0.68))


def _render_facial_hair(f: _Frame, img: np.ndarray, face_a: np.ndarray) -> None:
    idx = _where((f.ident["beard"] > 0) | (f.ident["moustache"] > 0))
    if idx is None:
        return
    uf, v, aa, p = f.uf[idx], f.v[idx], f.aa[idx], f.p
    x = uf - f.shift(_DEPTH_MOUTH, idx)
    # A full beard runs below a line from the sideburns down to the mouth corners; a goatee is
    # an oval patch on the chin.
    mouth_w, mouth_y = p("mouth_w", idx), p("mouth_y", idx)
    top = p("nose_bottom", idx) + _F32(0.03)
    slope = (top - p("ear_y", idx)) / (p("face_width", idx) - mouth_w * _F32(0.7))
    full = top - slope * _pos(np.abs(x) - mouth_w * _F32(0.7)) - v
    goatee = _ellipse(x, v - mouth_y - _F32(0.08), mouth_w * _F32(0.8), _F32(0.12))
    chin = p("beard_chin_only", idx)
    beard = full + chin * (goatee - full)
    alpha = _cov(beard, aa) * face_a[idx] * p("beard", idx)
    lip_y = (p("nose_bottom", idx) + p("mouth_y", idx)) * _F32(0.5) + _F32(0.005)
    stache = _ellipse(x, v - lip_y - x * x * _F32(1.5),
                      p("mouth_w", idx) * _F32(1.1), _F32(0.026))
    alpha = np.maximum(alpha, _cov(stache, aa) * p("moustache", idx))
    _paint_subset(img, idx, alpha, f.rgb("hair", idx) * _F32(0.85))


def _render_eyes(f: _Frame, img: np.ndarray) -> None:
    uf, v, aa, p = f.uf, f.v, f.aa, f.p
    centred = uf - f.shift(_DEPTH_EYES)
    side = np.sign(centred)
    x = np.abs(centred) - p("eye_dx")
    y = v - p("eye_y") + p("eye_tilt") * x
    eye_w, eye_h = p("eye_w"), p("eye_h") * p("eye_open")
    lash = _ellipse(x, y, eye_w * _F32(1.12), eye_h * _F32(1.2) + _F32(0.012))
    _paint(img, _cov(lash, aa) * _F32(0.85), f.rgb("brow") * _F32(0.5))
    white = _cov(_ellipse(x, y, eye_w, eye_h), aa)
    _paint(img, white, _const(0.95, 0.94, 0.91))
    ix = x - side * p("gaze_x") * eye_w * _F32(0.45)
    iy = y - p("gaze_y") * eye_h * _F32(0.4)
    r = np.sqrt(ix * ix + iy * iy)
    iris_r = p("iris_radius")
    _paint(img, _cov(r - iris_r, aa) * white, f.rgb("iris"))
    _paint(img, _cov(r - iris_r * _F32(0.45), aa) * white, _const(0.0, 0.0, 0.0))

    # Brows: arched bars above the eyes, raised by expression.
    bx = np.abs(centred) - p("eye_dx") - _F32(0.01)
    brow_len = p("brow_len")
    arch = p("brow_arch") * (_F32(1.0) - (bx / brow_len) ** 2)
    by = v - (p("eye_y") - p("brow_gap") - p("brow_raise") * _F32(0.025)) + arch
    by = by + p("brow_tilt") * bx
    brow = _ellipse(bx, by, brow_len, p("brow_thick"))
    _paint(img, _cov(brow, aa), f.rgb("brow"))


def _render_nose_mouth(f: _Frame, img: np.ndarray) -> None:
    uf, v, aa, p = f.uf, f.v, f.aa, f.p
    skin = f.rgb("skin")
    nx = uf - f.shift(_DEPTH_NOSE)
    bottom, nose_w, tip = p("nose_bottom"), p("nose_w"), p("nose_tip")
    ridge = _segment(nx, v, nose_w * _F32(0.35), p("eye_y") + _F32(0.05),
                     nose_w * _F32(0.6), bottom - tip)
    _paint(img, _cov(ridge - _F32(0.012), aa) * _F32(0.35), skin * _F32(0.7))
    ball = _ellipse(nx, v - (bottom - tip * _F32(0.7)), nose_w, tip)
    _paint(img, _cov(ball, aa) * _F32(0.45), skin * _F32(0.8))
    nostril = _ellipse(np.abs(nx) - nose_w * _F32(0.55), v - bottom + _F32(0.01),
                       _F32(0.021), _F32(0.012))
    _paint(img, _cov(nostril, aa) * _F32(0.8), skin * _F32(0.42))

    mx = uf - f.shift(_DEPTH_MOUTH)
    smile = p("smile")
    mouth_w = p("mouth_w") * (_F32(1.0) + _F32(0.18) * smile)
    bend = p("mouth_curve") + _F32(0.05) * smile
    t = mx / mouth_w
    my = v - p("mouth_y") + bend * (t * t - _F32(0.35))
    lips = _ellipse(mx, my, mouth_w, p("lip_thickness"))
    lip = f.rgb("lip")
    _paint(img, _cov(lips, aa), lip)
    gap = _F32(0.006) + _F32(0.02) * np.maximum(smile - _F32(0.5), _F32(0.0))
    seam = np.maximum(np.abs(my) - gap, np.abs(mx) - mouth_w * _F32(0.9))
    _paint(img, _cov(seam, aa), lip * _F32(0.35))


def _render_occluders(f: _Frame, img: np.ndarray, face_d: np.ndarray, cap: np.ndarray,
                      cap_ry: np.ndarray) -> None:
    """Glasses, masks and hats, each on the images that wear one."""
    p = f.p
    idx = _where(f.nuis["glasses"] > 0)
    if idx is not None:
        uf, v, aa = f.uf[idx], f.v[idx], f.aa[idx]
        centred = np.abs(uf - f.shift(_DEPTH_EYES + 0.05, idx))
        eye_dx, eye_w = p("eye_dx", idx), p("eye_w", idx)
        rx, ry = eye_w * _F32(1.55), eye_w * _F32(1.1)
        y = v - p("eye_y", idx) + _F32(0.005)
        lens = _ellipse(centred - eye_dx, y, rx, ry)
        tint = _F32(0.12) + _F32(0.75) * p("glasses_dark", idx)
        _paint_subset(img, idx, _cov(lens, aa) * tint, _const(0.1, 0.1, 0.12))
        ring = np.abs(lens) - _F32(0.011)
        bar = np.abs(y + _F32(0.02)) - _F32(0.01)
        bridge = np.maximum(centred - (eye_dx - rx * _F32(0.9)), bar)
        temple = np.maximum(centred - (p("face_width", idx) + _F32(0.01)), bar)
        temple = np.maximum(temple, eye_dx + rx * _F32(0.9) - centred)
        frame = np.minimum(np.minimum(ring, bridge), temple)
        _paint_subset(img, idx, _cov(frame, aa), f.rgb("frame", idx))

    idx = _where(f.nuis["mask"] > 0)
    if idx is not None:
        uf, v, aa = f.uf[idx], f.v[idx], f.aa[idx]
        x = uf - f.shift(_DEPTH_MOUTH, idx)
        w = p("face_width", idx)
        top = p("nose_bottom", idx) - _F32(0.05) + _F32(0.08) * (x / w) ** 2
        mask = np.maximum(face_d[idx] - _F32(0.015), top - v)
        _paint_subset(img, idx, _cov(mask, aa), f.rgb("mask", idx))

    idx = _where(f.nuis["hat"] > 0)
    if idx is not None:
        u, v, aa = f.u[idx], f.v[idx], f.aa[idx]
        h = p("face_height", idx)
        brim_y = -h * (_F32(1.0) - p("hat_depth", idx))
        crown = np.maximum(cap[idx] - _F32(0.025), v - brim_y)
        w_brim = p("face_width", idx) + p("hair_volume", idx) + _F32(0.1)
        brim = _ellipse(u - f.shift(_DEPTH_HEAD, idx), v - brim_y, w_brim, _F32(0.04))
        _paint_subset(img, idx, _cov(np.minimum(crown, brim), aa), f.rgb("hat", idx))


# (destination, source) slices along one axis: left and right neighbours, edges repeated.
_BLUR_TAPS = (
    (slice(1, None), slice(None, -1)),
    (slice(None, -1), slice(1, None)),
    (slice(0, 1), slice(0, 1)),
    (slice(-1, None), slice(-1, None)),
)


def _blur(img: np.ndarray, amount: np.ndarray, size: int) -> None:
    """Blend each image towards a separable [1, 2, 1] blur repeated ~size/32 times."""
    idx = _where(amount > 0)
    if idx is None:
        return
    sub = img[:, idx].reshape(3, len(idx), size, size)
    blurred = sub.copy()
    for _ in range(max(1, round(size / 32))):
        for axis in (2, 3):
            out = blurred * _F32(2.0)
            dst, src = [slice(None)] * 4, [slice(None)] * 4
            for dst_slice, src_slice in _BLUR_TAPS:
                dst[axis], src[axis] = dst_slice, src_slice
                out[tuple(dst)] += blurred[tuple(src)]
            blurred = out * _F32(0.25)
    weight = np.asarray(amount[idx], dtype=_F32).reshape(1, -1, 1, 1)
    sub += weight * (blurred - sub)
    img[:, idx] = sub.reshape(3, len(idx), size * size)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class ToyFacesWorld:
    """A seeded world of identities; images of size x size RGB at a given nuisance difficulty.

    Attributes: `group` 0..3 shifts skin tone (0 lightest) and hair/eye colour; `age` 0 young,
    1 adult, 2 old (grey hair, wrinkles, receding hairline); `sex` 0/1 is a shape attribute
    (0: wider jaw, thicker brows, shorter hair, facial hair possible). Nuisances: yaw and roll
    in degrees, shift in image half-widths, scale as a factor, expression and light in [-1, 1]
    or [0, 1], colours as RGB in [0, 1], occluders as 0/1 flags. Difficulty 1 is the intended
    working point; 0 removes every nuisance; values above 1 widen them further.
    """

    seed: int = 0
    size: int = 32
    difficulty: float = 1.0

    def __post_init__(self) -> None:
        _check_index("seed", self.seed)
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise TypeError(f"size must be an integer, got {self.size!r}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {self.size}")
        if isinstance(self.difficulty, bool) or not isinstance(
            self.difficulty, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"difficulty must be a number, got {self.difficulty!r}")
        if not math.isfinite(self.difficulty):
            raise ValueError(f"difficulty must be finite, got {self.difficulty}")
        if self.difficulty < 0:
            raise ValueError(f"difficulty must be >= 0, got {self.difficulty}")

    def _identity_tables(self, identities: Sequence[int]) -> dict[str, np.ndarray]:
        draws = [_identity_draws(self.seed, _check_index("identity", i)) for i in identities]
        u = np.stack([d[0] for d in draws]) if draws else np.zeros((0, len(_IDENTITY_UNIFORMS)))
        z = np.stack([d[1] for d in draws]) if draws else np.zeros((0, len(_IDENTITY_NORMALS)))
        return _identity_table(u, z)

    def _nuisance_tables(
        self, identities: Sequence[int], samples: Sequence[int]
    ) -> tuple[dict[str, np.ndarray], list[np.random.Generator]]:
        rngs = [
            _nuisance_rng(self.seed, _check_index("identity", i), _check_index("sample", s))
            for i, s in zip(identities, samples)
        ]
        k = len(_NUISANCE_UNIFORMS)
        u = np.stack([rng.random(k) for rng in rngs]) if rngs else np.zeros((0, k))
        return _nuisance_table(u, self.difficulty), rngs

    def identity_params(self, identity: int) -> dict:
        """All per-identity parameters, JSON-serialisable."""
        return _rows(self._identity_tables([identity]))[0]

    def attributes(self, identity: int) -> dict[str, int]:
        """Known labels: group 0..3, age 0 young / 1 adult / 2 old, sex 0..1."""
        params = self.identity_params(identity)
        return {k: params[k] for k in ("group", "age", "sex")}

    def nuisance(self, identity: int, sample: int) -> dict:
        """The per-image nuisance values (pose in degrees and face units), JSON-serialisable."""
        return _rows(self._nuisance_tables([identity], [sample])[0])[0]

    def render(self, identity: int, sample: int) -> tuple[np.ndarray, dict]:
        images, nuisances = self.render_batch([identity], [sample])
        return images[0], nuisances[0]

    def render_batch(
        self, identities: Sequence[int], samples: Sequence[int]
    ) -> tuple[np.ndarray, list[dict]]:
        """(N, H, W, 3) uint8 images and their nuisance dicts; each image is independent of
        the others in the batch."""
        identities, samples = list(identities), list(samples)
        if len(identities) != len(samples):
            raise ValueError(
                f"identities and samples differ in length: {len(identities)} vs {len(samples)}"
            )
        ident = self._identity_tables(identities)
        nuis, rngs = self._nuisance_tables(identities, samples)
        n, size = len(identities), self.size
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        step = max(1, _CHUNK_PIXELS // (size * size))
        for lo in range(0, n, step):
            part = slice(lo, lo + step)
            out[part] = _render_chunk(
                size,
                {k: col[part] for k, col in ident.items()},
                {k: col[part] for k, col in nuis.items()},
                rngs[part],
            )
        return out, _rows(nuis)

    def render_canonical(self, identity: int) -> np.ndarray:
        """The identity's difficulty-0 image: frontal, neutral, no occluders, blur or noise."""
        return replace(self, difficulty=0.0).render(identity, 0)[0]


@dataclass(frozen=True)
class ToyFacesSplit:
    """Disjoint identity ranges: train [0, num_train), test [num_train, num_train+num_test), and
    'new' identities (for synthetic identity seeds) starting at new_offset (default 1_000_000)."""

    num_train: int
    num_test: int
    new_offset: int = NEW_IDENTITY_OFFSET

    def __post_init__(self) -> None:
        _check_index("num_train", self.num_train)
        _check_index("num_test", self.num_test)
        _check_index("new_offset", self.new_offset)
        if self.new_offset < self.num_train + self.num_test:
            raise ValueError(
                f"new_offset {self.new_offset} overlaps train+test identities "
                f"[0, {self.num_train + self.num_test})"
            )

    def train_ids(self) -> range:
        return range(self.num_train)

    def test_ids(self) -> range:
        return range(self.num_train, self.num_train + self.num_test)

    def new_ids(self, n: int) -> range:
        return range(self.new_offset, self.new_offset + _check_index("n", n))


def verification_pairs(
    identities: Sequence[int], samples_per_identity: int, num_pairs: int, seed: int = 0
) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Shuffled (identity, sample) pairs, half genuine (same identity, two different samples) and
    half impostor (two different identities); deterministic for `seed`."""
    ids = [_check_index("identity", i) for i in identities]
    if len(set(ids)) != len(ids):
        raise ValueError("identities must not repeat")
    if len(ids) < 2:
        raise ValueError(f"need at least 2 identities for impostor pairs, got {len(ids)}")
    spi = _check_index("samples_per_identity", samples_per_identity)
    if spi < 2:
        raise ValueError(f"samples_per_identity must be >= 2 for genuine pairs, got {spi}")
    num_pairs = _check_index("num_pairs", num_pairs)
    if num_pairs % 2:
        raise ValueError(f"num_pairs must be even (half genuine, half impostor), got {num_pairs}")
    rng = np.random.default_rng(np.random.SeedSequence([_check_index("seed", seed), 0x9A1]))
    half = num_pairs // 2
    idx = np.asarray(ids)
    a = idx[rng.integers(0, len(ids), half)]
    s1 = rng.integers(0, spi, half)
    s2 = (s1 + rng.integers(1, spi, half)) % spi
    first = rng.integers(0, len(ids), half)
    second = (first + rng.integers(1, len(ids), half)) % len(ids)
    t1, t2 = rng.integers(0, spi, half), rng.integers(0, spi, half)
    pairs = [((int(a[k]), int(s1[k])), (int(a[k]), int(s2[k])), True) for k in range(half)]
    pairs += [
        ((int(idx[first[k]]), int(t1[k])), (int(idx[second[k]]), int(t2[k])), False)
        for k in range(half)
    ]
    return [pairs[k] for k in rng.permutation(num_pairs)]


def benchmark_render(
    sizes: Sequence[int] = (16, 32, 64, 112),
    batch: int = 64,
    seconds: float = 2.0,
    world_seed: int = 0,
) -> dict[int, float]:
    """Images per second of `render_batch` per size, on fresh identities (no cache hits)."""
    batch = _check_index("batch", batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rates: dict[int, float] = {}
    for size in sizes:
        world = ToyFacesWorld(seed=world_seed, size=size)
        next_id = 10_000_000
        world.render_batch(range(next_id, next_id + batch), [0] * batch)
        next_id += batch
        done, start = 0, time.perf_counter()
        while True:
            world.render_batch(range(next_id, next_id + batch), [0] * batch)
            next_id += batch
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates[int(size)] = done / elapsed
    return rates
