"""ToyFaces: a procedural world of face-like RGB images with real identity structure.

Why: face recognition and the similarity-conditioned generator must be learnable and measurable
on a CPU in seconds. `priors` draws identities and nuisances, `raster` holds the drawing
primitives, `layers` draws the face, `world` is the public API.
"""

from cemiray.data.toyfaces.priors import FACIAL_HAIR_STYLES, HAIR_STYLES
from cemiray.data.toyfaces.world import (
    MAX_SIZE,
    MIN_SIZE,
    NEW_IDENTITY_OFFSET,
    ToyFacesSplit,
    ToyFacesWorld,
    verification_pairs,
)

__all__ = [
    "FACIAL_HAIR_STYLES",
    "HAIR_STYLES",
    "MAX_SIZE",
    "MIN_SIZE",
    "NEW_IDENTITY_OFFSET",
    "ToyFacesSplit",
    "ToyFacesWorld",
    "verification_pairs",
]
