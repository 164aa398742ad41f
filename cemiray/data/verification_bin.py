"""arcface_torch verification `.bin` files (data): read safely and written.

arcface_torch verification sets (`lfw.bin`, `cfp_fp.bin`, ...): a pickle of
`(images, issame)`, two encoded images per pair and one bool per pair.

These files come from strangers, and unpickling runs whatever globals a pickle names, so they
are loaded with an unpickler that admits only what the format needs: bytes, lists, tuples and
bools need no globals; numpy bools need `numpy.dtype` and numpy's `scalar` reconstructor;
bytes pickled by Python 3 under protocol ≤ 2 need `_codecs.encode` (admitted for latin1 only). Any
other global is refused before it is called. Python 2 pickles (str images) load as bytes, as
arcface_torch's `encoding='bytes'` does."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from cemiray.data import storage
from cemiray.data.images import decode_image, resize

try:
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import scalar as _numpy_scalar



def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles bytes under protocols 0-2: `_codecs.encode(text, 'latin1')`."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode called with {type(text).__name__}, "
                                f"{encoding!r}; only latin1 text → bytes is allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
}


class VerificationBinError(ValueError):
    """A .bin that is not (images, issame) with two images per pair; names the file."""


class UnsafePickleError(VerificationBinError):
    """A .bin pickle names a global outside the allowed few; nothing from it was run."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(f"refusing global {module}.{name} (a verification .bin "
                                    "holds only bytes, lists, tuples, bools and numpy bools)")
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r}")


def _validate(url: str, obj: Any) -> tuple[list[bytes], list[bool]]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise VerificationBinError(f"{url}: expected a pickled (images, issame) pair, got "
                                   f"{type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise VerificationBinError(f"{url}: images and issame must be lists, got "
                                   f"{type(images).__name__} and {type(issame).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, (bytes, bytearray)):
            raise VerificationBinError(f"{url}: image {i} is {type(image).__name__}, not bytes")
    for i, flag in enumerate(issame):
        if not isinstance(flag, (bool, np.bool_)):
            raise VerificationBinError(f"{url}: issame[{i}] is {flag!r} "
                                       f"({type(flag).__name__}), not a bool")
    if len(images) != 2 * len(issame):
        raise VerificationBinError(f"{url}: {len(images)} images for {len(issame)} pairs; "
                                   "a verification set holds exactly two images per pair")
    return [bytes(b) for b in images], [bool(f) for f in issame]


def write_bin(url: str, images: list[bytes], issame: list[bool]) -> None:
    """Write a verification set (pickle protocol 4, atomically)."""
    images, issame = _validate(url, (list(images), list(issame)))
    storage.atomic_write_bytes(url, pickle.dumps((images, issame), protocol=4))


def load_bin(url: str) -> tuple[list[bytes], list[bool]]:
    """(encoded images, issame) of a verification set, loaded without running foreign code."""
    data = storage.read_bytes(url)
    try:
        obj = _RestrictedUnpickler(data).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{url}: {exc}; nothing in it was run") from None
    except Exception as exc:
        raise VerificationBinError(f"{url}: not a readable pickle ({type(exc).__name__}: "
                                   f"{exc})") from exc
    return _validate(url, obj)


def decode_bin(url: str, image_size: int | tuple[int, int] = 112) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 N×H×W×3 RGB (resized where their size differs, as arcface_torch's
    load_bin does) and issame as a bool array of N/2 pairs."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    encoded, issame = load_bin(url)
    out = np.empty((len(encoded), height, width, 3), dtype=np.uint8)
    for i, data in enumerate(encoded):
        out[i] = resize(decode_image(data, where=f"{url} image {i}"), (height, width))
    return out, np.asarray(issame, dtype=bool)
