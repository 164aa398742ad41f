"""dlib's ResNet as a recogniser (models): the independent judge for real faces.

dlib's 128-d face ResNet as a recogniser that no one here trained: the independent judge for
real faces (optional extra `judge`: `pip install dlib-bin face-recognition-models`).

Faces arrive as crops (the datasets here store aligned or tightly cropped faces), so no detector
runs: dlib's 5-point landmark model is fitted inside the whole image, the face is aligned to a
150 px chip, and the descriptor is computed on it. Similarity: dlib compares raw descriptors by
Euclidean distance (0.6 is its same-person threshold); their norms are nearly constant (1.40 ±
0.07 on ORL), so between unit descriptors that threshold is d = 0.6 / 1.4 ≈ 0.43. With
d² = 2 − 2·cos, the reports use s = 1 − d²/(2·0.43²): s = 0.5 at the threshold, 1 for identical
descriptors, ≤ 0 beyond d ≈ 0.61 (`to_similarity`). TAR at a FAR, EER and d′ do not change
under this monotone affine map; means and histograms are in s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cemiray.data import pixels
from cemiray.models.hashing import model_hash
from cemiray.models.recognizer_base import Recognizer, check_normalised_tensor

DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS = "shape_predictor_5_face_landmarks.dat"
CHIP_SIZE = 150
RAW_THRESHOLD = 0.6  # dlib's same-person distance between raw descriptors
RAW_NORM = 1.4  # their typical norm (1.40 ± 0.07 on ORL)
THRESHOLD = RAW_THRESHOLD / RAW_NORM  # the same threshold between unit descriptors
SCALE = 2 * THRESHOLD**2  # s = 1 − d² / SCALE: 0.5 at the threshold
INSTALL = "pip install dlib-bin face-recognition-models"


def model_folder() -> Path:
    """Where the face-recognition-models wheel keeps dlib's weights (found without importing it:
    its import needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ImportError(f"the dlib judge needs face-recognition-models: {INSTALL}")
    return Path(spec.origin).parent / "models"


class DlibRecognizer(Recognizer):
    """dlib's ResNet descriptor on 5-point-aligned 150 px chips; not differentiable."""

    input_size = CHIP_SIZE
    dim = 128

    def __init__(self, device: str | torch.device = "cpu") -> None:
        try:
            import dlib
        except ImportError as exc:
            raise ImportError(f"the dlib judge needs dlib: {INSTALL}") from exc
        folder = model_folder()
        weights = folder / DESCRIPTOR
        self._dlib = dlib
        self.encoder = dlib.face_recognition_model_v1(str(weights))
        self.landmarks = dlib.shape_predictor(str(folder / LANDMARKS))
        self.content_hash = model_hash(str(weights))
        self.device = torch.device(device)

    def descriptor(self, image: np.ndarray) -> np.ndarray:
        """The 128-d descriptor of one uint8 H×W×3 RGB face crop."""
        height, width = image.shape[:2]
        image = np.ascontiguousarray(image)
        shape = self.landmarks(image, self._dlib.rectangle(0, 0, width - 1, height - 1))
        chip = self._dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=0.25)
        return np.asarray(self.encoder.compute_face_descriptor(chip), dtype=np.float32)

    def _features(self, x: torch.Tensor) -> np.ndarray:
        images = pixels.to_numpy(x.float().cpu())
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.descriptor(image) for image in images])

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        check_normalised_tensor(x)
        if x.requires_grad:
            raise TypeError("the dlib judge is not differentiable; it measures, it does not train")
        return torch.from_numpy(self.embed(x)).to(x.device)

    @staticmethod
    def to_similarity(cosine: np.ndarray) -> np.ndarray:
        """Cosine of unit descriptors → s = 1 − d²/(2·0.43²) (0.5 at dlib's threshold)."""
        return 1.0 - (2.0 - 2.0 * np.asarray(cosine, dtype=np.float64)) / SCALE
