"""ToyFaces priors: the parameter tables and seeded draws that make identities and image nuisances.

Each identity is a fixed draw of face parameters (shape, colours, features, hair, marks) whose
distributions shift with known attributes (group, age, sex); each image adds nuisances (pose,
expression, light, background, occluders, blur, noise) whose amplitudes `difficulty` scales.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

HAIR_STYLES = ("crop", "side_part", "long", "curly", "bald", "bun")
FACIAL_HAIR_STYLES = ("none", "stubble", "full_beard", "goatee", "moustache")

# SeedSequence pads short entropy with zeros, so [seed, id] and [seed, id, 0] would collide
# without a non-zero tag at the end of the per-image streams.
_NUISANCE_TAG = 1

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
