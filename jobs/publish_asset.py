"""Publish a trained model as a shipped asset with its model card (assets job).

    python jobs/publish_asset.py --source runs/assets_fr/fr/backbone --name fr \
        --title "ToyFaces recogniser" --command "cemiray train-fr …" --data "toyfaces:?…" \
        --wall-time "7.5 min" --figures runs/assets_fr/figures.json [--notes "…"]

Copies the folder's config.json and safetensors files into cemiray/assets/toyfaces/NAME and
writes MODEL_CARD.md (how it was made, the SHA-256 of every file and the model hash,
cemiray.models.hashing.model_hash; tests/test_assets.py checks that the files still match it). The commit is the repository's HEAD unless given.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cemiray.assets import ASSETS
from cemiray.assets.cards import publish
from cemiray.models.hashing import model_hash


def head_commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                         text=True, check=True, timeout=10)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="model folder to publish")
    parser.add_argument("--name", required=True, help="asset name under assets/toyfaces")
    parser.add_argument("--title", required=True)
    parser.add_argument("--summary", default="")
    parser.add_argument("--command", required=True, help="the exact command that trained it")
    parser.add_argument("--data", required=True)
    parser.add_argument("--wall-time", required=True)
    parser.add_argument("--figures", help="JSON file of measured figures")
    parser.add_argument("--notes", default=None)
    parser.add_argument("--commit", default=None)
    args = parser.parse_args(argv)
    source = Path(args.source)
    if not source.is_dir():
        raise SystemExit(f"--source {source}: not a folder")
    facts = {"summary": args.summary, "command": args.command,
             "commit": args.commit or head_commit(), "data": args.data,
             "wall_time": args.wall_time, "machine": f"{platform.node()} ({platform.machine()})",
             "date": time.strftime("%Y-%m-%d")}
    if args.figures:
        facts["figures"] = json.loads(Path(args.figures).read_text())
    if args.notes:
        facts["notes"] = args.notes
    dest = ASSETS / "toyfaces" / args.name
    hashes = publish(source, dest, args.title, facts)
    size = sum((dest / name).stat().st_size for name in hashes)
    print(f"published {len(hashes)} files ({size / 2**20:.1f} MiB), model hash "
          f"{model_hash(str(dest))} → {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
