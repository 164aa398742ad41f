"""The embedded default's tiny models: E_id, generators, judge, attribute models, GAN.

Each is a folder of config.json + safetensors with a MODEL_CARD.md saying how it was made and
listing every file's SHA-256 (cemiray.assets.cards; `python jobs/publish_asset.py` writes them)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
TOYFACES_RECOGNIZER = str(ASSETS / "toyfaces" / "fr")
TOYFACES_GENERATOR = str(ASSETS / "toyfaces" / "generator")
# The generator fine-tuned with a variation condition (pose, expression, occluders, light, blur).
TOYFACES_GENERATOR_VARIATION = str(ASSETS / "toyfaces" / "generator_variation")
# The independent judge: measures generated images, never conditions, trains or selects them.
TOYFACES_JUDGE = str(ASSETS / "toyfaces" / "judge")
# Labels faces that carry no labels (seeds' attribute_model; selects under gan_condition).
TOYFACES_ATTRIBUTES = str(ASSETS / "toyfaces" / "attributes")
# The independent attribute estimator: measures demographics and variation, selects nothing.
TOYFACES_ATTRIBUTES_JUDGE = str(ASSETS / "toyfaces" / "attributes_judge")
# The StyleGAN identity generator (train-gan).
TOYFACES_GAN = str(ASSETS / "toyfaces" / "gan")
