"""What names a face row to its owner, whatever the source kind.

`label-attr` writes this key beside its labels and `train-gen` joins a variation table on it:
class_name/filename for an image folder, identity/sample for ToyFaces, label/sample where a
source has those, else the row's index in the source."""

from __future__ import annotations


def row_key(row: dict) -> str:
    if "class_name" in row and "filename" in row:
        return f"{row['class_name']}/{row['filename']}"
    if "identity" in row and "sample" in row:
        return f"{row['identity']}/{row['sample']}"
    if "sample" in row and "label" in row:
        return f"{row['label']}/{row['sample']}"
    return str(row["index"])
