"""The embedded default's pretrained tiny models: ToyFaces recogniser E_id, generator and judge.

Each is a folder of config.json + safetensors with a MODEL_CARD.md saying how it was made and
listing every file's SHA-256 (cemiray.assets.cards; `python jobs/publish_asset.py` writes them)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
TOYFACES_RECOGNIZER = str(ASSETS / "toyfaces" / "fr")
TOYFACES_GENERATOR = str(ASSETS / "toyfaces" / "generator")
# The independent judge: measures generated images, never conditions, trains or selects them.
TOYFACES_JUDGE = str(ASSETS / "toyfaces" / "judge")
