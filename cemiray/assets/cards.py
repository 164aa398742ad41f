"""Model cards of the shipped assets: how each model was made, and the SHA-256 of every file, so
a test can tell when weights and card disagree.

The card is MODEL_CARD.md in the model's folder. Its "Files" section holds one line per file,
"`<sha256>  <relative path>`", inside a fenced block; everything else is for people.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

CARD_NAME = "MODEL_CARD.md"
HASH_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` except the card itself."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CARD_NAME}


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
    lines += ["", "## Files", "", "```"]
    lines += [f"{digest}  {name}" for name, digest in sorted(hashes.items())]
    lines += ["```", ""]
    return "\n".join(lines)


def card_hashes(folder: Path) -> dict[str, str]:
    """The (path → SHA-256) lines of the card's Files section."""
    card = folder / CARD_NAME
    if not card.is_file():
        raise FileNotFoundError(f"{card}: the asset has no model card")
    text = card.read_text()
    section = text.split("## Files", 1)
    if len(section) != 2:
        raise ValueError(f"{card}: no '## Files' section")
    out = {}
    for line in section[1].splitlines():
        match = HASH_LINE.match(line.strip())
        if match:
            out[match.group(2)] = match.group(1)
    if not out:
        raise ValueError(f"{card}: the Files section lists no file hashes")
    return out


def verify(folder: Path) -> None:
    """Raise when a file is missing, extra or changed relative to the card."""
    listed, actual = card_hashes(folder), file_hashes(folder)
    if listed != actual:
        missing = sorted(set(listed) - set(actual))
        extra = sorted(set(actual) - set(listed))
        changed = sorted(k for k in set(listed) & set(actual) if listed[k] != actual[k])
        raise ValueError(f"{folder}: files disagree with {CARD_NAME}: missing {missing}, "
                         f"not listed {extra}, changed {changed}")


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
    hashes = file_hashes(dest)
    if not hashes:
        raise FileNotFoundError(f"{source}: no {include} files to publish")
    (dest / CARD_NAME).write_text(render_card(title, facts, hashes))
    return hashes
