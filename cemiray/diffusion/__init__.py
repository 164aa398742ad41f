"""The CemiFace generator: condition encoder, presets, training loss, sampling pipeline.

Built on diffusers (UNet2DConditionModel, DDIM/DPM-Solver schedulers); imports no Ray.
"""

from cemiray.diffusion.closed_loop import ClosedLoopOutput, closed_loop_generate
from cemiray.diffusion.condition_encoder import CemiConditionEncoder, ConditionOutput
from cemiray.diffusion.pipeline import (
    SCHEDULERS,
    CemiFaceOutput,
    CemiFacePipeline,
    identity_embeddings_from_images,
    load_pipeline,
    save_pipeline,
)
from cemiray.diffusion.presets import (
    PRESETS,
    GeneratorPreset,
    build_generator,
    build_sample_scheduler,
    build_train_scheduler,
    resolve_preset,
)
from cemiray.diffusion.similarity_loss import (
    IdentityEncoder,
    SimilarityLoss,
    as_identity_encoder,
    m_grid,
    sample_m_grid,
    training_step,
)

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
