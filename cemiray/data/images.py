"""Image bytes ↔ pixels (data): PNG/JPEG encoding and strict decoding to uint8 RGB.

Image bytes ↔ pixels. Every face row carries its image encoded (PNG or JPEG) so that rows are
small and formats stay interchangeable; pixels are always uint8 RGB, H×W×3."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


class ImageDecodeError(ValueError):
    """Bytes that are not a complete image; the message names where they came from."""


def _as_pil(arr: np.ndarray) -> Image.Image:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.ndim == 3 and arr.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
    raise ValueError(f"image must be H×W or H×W×3, got shape {arr.shape}")


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless encoding: decode_image(encode_png(a)) equals a (grey comes back as 3 channels)."""
    buf = io.BytesIO()
    _as_pil(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    _as_pil(arr).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def image_format(data: bytes) -> str:
    """'png', 'jpeg' or '' from the signature, without decoding."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return ""


def decode_image(data: bytes, where: str = "") -> np.ndarray:
    """Decode fully (truncated data raises, never yields partial pixels) to uint8 H×W×3 RGB."""
    label = where or "image bytes"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"{label}: expected encoded image bytes, got {type(data).__name__}")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageDecodeError(
            f"{label}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode, since "
            "truncated images would pass as partial pixels"
        )
    raw = bytes(data)
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format == "PNG":
                img.verify()  # chunk checksums and IEND: damage that load() alone lets through
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            pixels = _to_rgb(img, label)
    except ImageDecodeError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors...
        reason = f"{type(exc).__name__}: {exc}"
        raise ImageDecodeError(f"{label}: not a complete image ({reason})") from exc
    return pixels


def _to_rgb(img: Image.Image, label: str) -> np.ndarray:
    if img.mode.startswith("I;16"):
        grey = np.round(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise ImageDecodeError(f"{label}: {img.mode} (32-bit) images are not supported")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def image_size(data: bytes, where: str = "") -> tuple[int, int]:
    """(H, W) read from the image header only, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            width, height = img.size
    except Exception as exc:
        raise ImageDecodeError(f"{where or 'image bytes'}: not an image ({exc})") from exc
    return height, width


def resize(arr: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize to `size` = (H, W), or a square side."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    arr = np.asarray(arr)
    if arr.shape[:2] == (height, width):
        return arr
    out = _as_pil(arr).resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


RESIZE_MODES = ("stretch", "crop", "pad")


def fit_square(arr: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """An H×W×3 image as size×size: `stretch` resizes as it is (a non-square face is
    distorted), `crop` takes the centred square of the shorter side first, `pad` centres the image
    on a black square of the longer side first (both keep the aspect)."""
    height, width = arr.shape[:2]
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize={mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    if height != width and mode == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        arr = arr[top:top + side, left:left + side]
    elif height != width and mode == "pad":
        side = max(height, width)
        square = np.zeros((side, side) + arr.shape[2:], dtype=arr.dtype)
        top, left = (side - height) // 2, (side - width) // 2
        square[top:top + height, left:left + width] = arr
        arr = square
    return resize(arr, size)
