"""The CemiFace generator: condition encoder, presets, training loss, sampling pipeline.

Built on diffusers (UNet2DConditionModel, DDIM/DPM-Solver schedulers); imports no Ray. The names
below load on first use, so importing a light module of this package (sampling options) does not
import diffusers.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CemiConditionEncoder": "cemiray.diffusion.condition_encoder",
    "CemiFaceOutput": "cemiray.diffusion.pipeline",
    "CemiFacePipeline": "cemiray.diffusion.pipeline",
    "ClosedLoopOutput": "cemiray.diffusion.closed_loop",
    "ConditionOutput": "cemiray.diffusion.condition_encoder",
    "GeneratorPreset": "cemiray.diffusion.presets",
    "IdentityEncoder": "cemiray.diffusion.similarity_loss",
    "PRESETS": "cemiray.diffusion.presets",
    "SCHEDULERS": "cemiray.diffusion.pipeline",
    "SimilarityLoss": "cemiray.diffusion.similarity_loss",
    "as_identity_encoder": "cemiray.diffusion.similarity_loss",
    "build_generator": "cemiray.diffusion.presets",
    "build_sample_scheduler": "cemiray.diffusion.presets",
    "build_train_scheduler": "cemiray.diffusion.presets",
    "closed_loop_generate": "cemiray.diffusion.closed_loop",
    "identity_embeddings_from_images": "cemiray.diffusion.pipeline",
    "load_pipeline": "cemiray.diffusion.pipeline",
    "m_grid": "cemiray.diffusion.similarity_loss",
    "resolve_preset": "cemiray.diffusion.presets",
    "sample_m_grid": "cemiray.diffusion.similarity_loss",
    "save_pipeline": "cemiray.diffusion.pipeline",
    "training_step": "cemiray.diffusion.similarity_loss",
}

__all__ = [
    "PRESETS",
    "SCHEDULERS",
    "CemiConditionEncoder",
    "CemiFaceOutput",
    "CemiFacePipeline",
    "ClosedLoopOutput",
    "ConditionOutput",
    "GeneratorPreset",
    "IdentityEncoder",
    "SimilarityLoss",
    "as_identity_encoder",
    "build_generator",
    "build_sample_scheduler",
    "build_train_scheduler",
    "closed_loop_generate",
    "identity_embeddings_from_images",
    "load_pipeline",
    "m_grid",
    "resolve_preset",
    "sample_m_grid",
    "save_pipeline",
    "training_step",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cemiray.diffusion' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
