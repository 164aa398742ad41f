"""Model cards of the shipped assets (assets): how each model was made and the SHA-256 of its files.

The card is MODEL_CARD.md in the model's folder. Its "Files" section holds one line per file,
"`<sha256>  <relative path>`", inside a fenced block, and may name the model hash: the one
content hash of the project (cemiray.models.hashing.model_hash), which is the SHA-256 of exactly
those lines, so card, `/v1/models` and the rows a generator makes name a model alike. Everything
else is for people.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from cemiray.models.hashing import CARD_NAME, folder_file_hashes, hash_lines, model_hash

HASH_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")
MODEL_HASH_LINE = re.compile(r"^Model hash: `([0-9a-f]{64})`")

__all__ = ["CARD_NAME", "card_hashes", "card_model_hash", "file_hashes", "publish",
           "render_card", "verify"]


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` that the model hash covers (all but the card)."""
    return dict(sorted(folder_file_hashes(str(folder)).items()))


def render_card(title: str, facts: dict[str, Any], hashes: dict[str, str]) -> str:
    lines = [f"# {title}", ""]
    for key in ("summary", "command", "commit", "data", "wall_time", "machine", "date"):
        if key in facts:
            value = facts[key]
            text = f"`{value}`" if key in ("command", "commit") else str(value)
            lines.append(f"- **{key.replace('_', ' ')}**: {text}")
    if "figures" in facts:
        lines += ["", "## Measured figures", "", "```json",
                  json.dumps(facts["figures"], indent=2, sort_keys=True), "```"]
    if "notes" in facts:
        lines += ["", "## Notes", "", str(facts["notes"])]
    shown = (f"Model hash: `{hash_lines(hashes.items())}` (the SHA-256 of the lines below; what "
             "`/v1/models` and the lineage columns of generated rows say)")
    lines += ["", "## Files", "", shown, "", "```"]
    lines += [f"{digest}  {name}" for name, digest in sorted(hashes.items())]
    lines += ["```", ""]
    return "\n".join(lines)


def _files_section(folder: Path) -> str:
    card = folder / CARD_NAME
    if not card.is_file():
        raise FileNotFoundError(f"{card}: the asset has no model card")
    section = card.read_text().split("## Files", 1)
    if len(section) != 2:
        raise ValueError(f"{card}: no '## Files' section")
    return section[1]


def card_hashes(folder: Path) -> dict[str, str]:
    """The (path → SHA-256) lines of the card's Files section."""
    out = {}
    for line in _files_section(folder).splitlines():
        match = HASH_LINE.match(line.strip())
        if match:
            out[match.group(2)] = match.group(1)
    if not out:
        raise ValueError(f"{folder / CARD_NAME}: the Files section lists no file hashes")
    return out


def card_model_hash(folder: Path) -> str | None:
    """The model hash the card shows, if it shows one."""
    for line in _files_section(folder).splitlines():
        match = MODEL_HASH_LINE.match(line.strip())
        if match:
            return match.group(1)
    return None


def verify(folder: Path) -> None:
    """Raise when a file is missing, extra or changed relative to the card, or when the model
    hash the card shows is not the folder's."""
    listed, actual = card_hashes(folder), file_hashes(folder)
    if listed != actual:
        missing = sorted(set(listed) - set(actual))
        extra = sorted(set(actual) - set(listed))
        changed = sorted(k for k in set(listed) & set(actual) if listed[k] != actual[k])
        raise ValueError(f"{folder}: files disagree with {CARD_NAME}: missing {missing}, "
                         f"not listed {extra}, changed {changed}")
    shown = card_model_hash(folder)
    if shown is not None and shown != model_hash(str(folder)):
        raise ValueError(f"{folder}: {CARD_NAME} shows model hash {shown[:12]}, the folder's "
                         f"is {model_hash(str(folder))[:12]}")


def publish(source: Path, dest: Path, title: str, facts: dict[str, Any],
            include: tuple[str, ...] = ("*.json", "*.safetensors")) -> dict[str, str]:
    """Copy a model folder's config and weight files into `dest` and write its card."""
    if dest.exists():
        shutil.rmtree(dest)
    for pattern in include:
        for path in source.rglob(pattern):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    hashes = file_hashes(dest) if dest.is_dir() else {}
    if not hashes:
        raise FileNotFoundError(f"{source}: no {include} files to publish")
    (dest / CARD_NAME).write_text(render_card(title, facts, hashes))
    return hashes
