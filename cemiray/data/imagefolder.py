"""ImageFolder datasets (data): one folder per identity, as torchvision and arcface_torch read them.

ImageFolder datasets: `<root>/<identity>/<sample>.<png|jpg>`, one folder per identity, as
torchvision's ImageFolder and arcface_torch read them.

Labels are positions in the sorted list of folder names (torchvision's rule) and samples are
positions in the sorted list of a folder's images; the writer zero-pads both numbers so that
sorted order is numeric order and dense labels and samples come back unchanged. Hidden files
(`.name`, e.g. the temporary files of atomic writes) are ignored; any other file that is not
an image is an error."""

from __future__ import annotations

import posixpath

from cemiray.data import storage
from cemiray.data.images import decode_image, encode_png, image_format

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".webp")


class ImageFolderError(ValueError):
    """An ImageFolder tree with unexpected content; the message names the path."""


def _extension(data: bytes, where: str) -> str:
    kind = image_format(data)
    if not kind:
        raise ImageFolderError(f"{where}: image bytes are neither PNG nor JPEG")
    return ".png" if kind == "png" else ".jpg"


def write_imagefolder(root_url: str, rows: list[dict]) -> int:
    """Write each row's image bytes unchanged to `<root>/<label>/<sample>.<ext>`; returns count."""
    rows = list(rows)
    if not rows:
        storage.makedirs(root_url)
        return 0
    label_width = len(str(max(int(r["label"]) for r in rows)))
    sample_width = len(str(max(int(r["sample"]) for r in rows)))
    seen: set[tuple[int, int]] = set()
    for i, row in enumerate(rows):
        label, sample = int(row["label"]), int(row["sample"])
        if label < 0 or sample < 0:
            raise ImageFolderError(f"{root_url}: row {i} has negative label/sample "
                                   f"({label}, {sample})")
        if (label, sample) in seen:
            raise ImageFolderError(f"{root_url}: row {i} repeats label {label} sample {sample}")
        seen.add((label, sample))
        name = f"{sample:0{sample_width}d}" + _extension(row["image"], f"{root_url}: row {i}")
        url = storage.join(root_url, f"{label:0{label_width}d}", name)
        storage.atomic_write_bytes(url, bytes(row["image"]))
    return len(rows)


def _visible(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(".")]


def class_names(root_url: str) -> list[str]:
    """Identity folder names in label order."""
    if not storage.exists(root_url):
        raise storage.StorageError(f"{root_url}: no such ImageFolder root")
    fs, root = storage.filesystem(root_url)
    names = []
    for name in _visible(storage.listdir(root_url)):
        if not fs.isdir(posixpath.join(root, name)):
            raise ImageFolderError(f"{storage.join(root_url, name)}: a file at the ImageFolder "
                                   "root; expected one folder per identity")
        names.append(name)
    return names


def image_files(root_url: str, class_name: str) -> list[str]:
    """URLs of one identity's images, in sample order."""
    folder = storage.join(root_url, class_name)
    files = []
    for name in _visible(storage.listdir(folder)):
        url = storage.join(folder, name)
        if posixpath.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
            raise ImageFolderError(f"{url}: not an image file (expected {IMAGE_EXTENSIONS})")
        files.append(url)
    return files


def index_imagefolder(root_url: str) -> list[dict]:
    """Every image of the tree as {url, label, sample, class_name}, without reading it."""
    return [
        {"url": url, "label": label, "sample": sample, "class_name": name}
        for label, name in enumerate(class_names(root_url))
        for sample, url in enumerate(image_files(root_url, name))
    ]


def load_entry(entry: dict) -> dict:
    """The face row of one `index_imagefolder` entry. PNG and JPEG bytes are kept as they are;
    other formats (BMP, PGM, ...) are re-encoded as PNG."""
    data = storage.read_bytes(entry["url"])
    if not image_format(data):
        data = encode_png(decode_image(data, where=entry["url"]))
    return {"image": data, "label": entry["label"], "sample": entry["sample"],
            "class_name": entry["class_name"], "filename": posixpath.basename(entry["url"])}


def read_imagefolder(root_url: str) -> list[dict]:
    """Face rows with metadata `class_name` (the folder) and `filename`."""
    return [load_entry(entry) for entry in index_imagefolder(root_url)]
