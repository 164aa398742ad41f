"""ToyFaces layers: what is drawn on a face, back to front, into one chunk of images.

Every pixel operation is elementwise IEEE arithmetic (no transcendental functions over pixel
arrays), so an image is bit-identical whatever batch it is rendered in.
"""

from __future__ import annotations

import math

import numpy as np

from cemiray.data.toyfaces.priors import _trig
from cemiray.data.toyfaces.raster import (
    _F32,
    _blur,
    _const,
    _cov,
    _ellipse,
    _fine_pattern,
    _Frame,
    _paint,
    _paint_subset,
    _pos,
    _segment,
    _tri,
    _where,
)

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
