"""The recogniser interface (models): images in, unit embeddings out, shared input checks.

The recogniser interface every face-recognition model here implements: images in (uint8 RGB
or float tensors in [−1, 1]), unit embeddings out, and the input checks they share."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from cemiray.data import pixels


def check_uint8_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 numpy array, got {type(images).__name__} "
                        f"{getattr(images, 'dtype', '')}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be N x H x W x 3 (RGB), got shape {images.shape}")


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB N x H x W x 3 -> float32 N x 3 x H x W in [-1, 1]: (x/255 - 0.5)/0.5."""
    check_uint8_images(images)
    return pixels.from_numpy(images)


def check_normalised_tensor(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"expected a float tensor in [-1, 1], got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W, got shape {tuple(x.shape)}")


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of N x 3 x H x W to size x size; a no-op when it fits."""
    if x.shape[2] == size and x.shape[3] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


class Recognizer(ABC):
    """A frozen face-recognition model: images -> unit embedding vectors."""

    input_size: int
    dim: int
    content_hash: str

    def embed(self, images: np.ndarray | torch.Tensor, normalize: bool = True,
              batch_size: int = 64) -> np.ndarray:
        """Embeddings (N x dim, float32) of uint8 RGB N x H x W x 3 images or of a float
        N x 3 x H x W tensor already in [-1, 1]; images are resized to input_size.
        `normalize=False` returns the raw features (the verification protocol sums the raw
        features of an image and its flip before normalising)."""
        if isinstance(images, np.ndarray):
            check_uint8_images(images)
            chunks = (images_to_tensor(images[i:i + batch_size])
                      for i in range(0, len(images), batch_size))
        else:
            check_normalised_tensor(images)
            chunks = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        outputs = [self._features(chunk.detach()) for chunk in chunks]
        if not outputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        features = np.concatenate(outputs).astype(np.float32)
        if normalize:
            features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return features

    @abstractmethod
    def _features(self, x: torch.Tensor) -> np.ndarray:
        """Raw features of a float N x 3 x H x W tensor in [-1, 1] (no gradient)."""

    @abstractmethod
    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (N x dim) of a float N x 3 x H x W tensor in [-1, 1]."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Row-wise similarity of two N×dim arrays of this model's unit embeddings, on the scale
        reports show (`to_similarity` of their cosine)."""
        cosine = np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64), axis=1)
        return self.to_similarity(cosine)

    @staticmethod
    def to_similarity(cosine: np.ndarray) -> np.ndarray:
        """The similarity reports show for a cosine of unit embeddings: the cosine itself, except
        for recognisers whose own scale differs (dlib's distances)."""
        return np.asarray(cosine, dtype=np.float64)
