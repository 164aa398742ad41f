"""Generated shards → training formats (pipeline): insightface RecordIO and ImageFolder.

Generated shards → the training formats of the field: insightface RecordIO
(`train.rec`/`train.idx`/`property`) and ImageFolder (`<label>/<sample>.png`). Image bytes are
copied unchanged (PNG); labels are the dataset's identity indices, samples the per-identity
sample indices, so both formats read back to the same (label, sample, pixels) rows.

Both writers (cemiray.data.recordio, cemiray.data.imagefolder) take the rows as one list, so an
export holds every image of the dataset in memory at once: fine for hundreds of thousands of
small PNGs, not for tens of millions."""

from __future__ import annotations

from collections.abc import Iterator

from cemiray.data.parquet_shards import iter_rows, list_shards


def face_rows(parquet_url: str) -> Iterator[dict]:
    """(image, label, sample) of every row of the shards, in shard order."""
    if not list_shards(parquet_url):
        raise ValueError(f"{parquet_url}: no shards to export")
    for row in iter_rows(parquet_url):
        yield {"image": row["image"], "label": int(row["label"]), "sample": int(row["sample"])}


def export_recordio(parquet_url: str, folder_url: str, num_classes: int, image_size: int) -> int:
    """Write `folder_url/train.{rec,idx}` + `property`; returns the number of images."""
    from cemiray.data.recordio import write_recordio

    return write_recordio(folder_url, face_rows(parquet_url), num_classes=num_classes,
                          image_size=image_size)


def export_imagefolder(parquet_url: str, root_url: str) -> int:
    """Write `root_url/<label>/<sample>.png`; returns the number of images."""
    from cemiray.data.imagefolder import write_imagefolder

    return write_imagefolder(root_url, list(face_rows(parquet_url)))
