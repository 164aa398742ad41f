"""The ORL face database (data): 40 subjects × 10 grey 92×112 photos, read as face rows.

The ORL (AT&T) face database: 40 subjects × 10 grey 92×112 PGM images, `s<subject>/<n>.pgm`.
The one real face dataset shipped beside the project, at `../shared/data/orl_faces` from the
project root."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cemiray.data import storage
from cemiray.data.images import decode_image, encode_png

NUM_SUBJECTS = 40
IMAGES_PER_SUBJECT = 10
IMAGE_HEIGHT, IMAGE_WIDTH = 112, 92


def _project_root() -> Path:
    """The folder holding pyproject.toml above this file (the current folder if none is)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


DEFAULT_ORL_ROOT = str(_project_root().parent / "shared" / "data" / "orl_faces")


class OrlError(ValueError):
    """A missing or malformed ORL tree; the message names the path."""


def read_orl(root_url: str = DEFAULT_ORL_ROOT, subjects: Iterable[int] | None = None) -> list[dict]:
    """Face rows: label = subject − 1, sample = image number − 1, image as RGB PNG bytes,
    metadata `subject`. Every expected file must be there."""
    root_url = str(root_url)
    if not storage.exists(root_url):
        raise OrlError(f"{root_url}: ORL root not found (expected s1..s{NUM_SUBJECTS}/"
                       f"1..{IMAGES_PER_SUBJECT}.pgm)")
    chosen = list(range(1, NUM_SUBJECTS + 1)) if subjects is None else [int(s) for s in subjects]
    rows = []
    for subject in chosen:
        if not 1 <= subject <= NUM_SUBJECTS:
            raise OrlError(f"{root_url}: ORL subject {subject} outside 1..{NUM_SUBJECTS}")
        for number in range(1, IMAGES_PER_SUBJECT + 1):
            url = storage.join(root_url, f"s{subject}", f"{number}.pgm")
            if not storage.exists(url):
                raise OrlError(f"{url}: ORL image missing")
            pixels = decode_image(storage.read_bytes(url), where=url)
            if pixels.shape[:2] != (IMAGE_HEIGHT, IMAGE_WIDTH):
                raise OrlError(f"{url}: image is {pixels.shape[0]}×{pixels.shape[1]}, ORL images "
                               f"are {IMAGE_HEIGHT}×{IMAGE_WIDTH}")
            rows.append({"image": encode_png(pixels), "label": subject - 1,
                         "sample": number - 1, "subject": subject})
    return rows
