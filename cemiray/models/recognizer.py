"""Loading recognisers (models): cemiray folders, arcface_torch `.pth`, insightface ONNX, dlib.

Loading the face-recognition models users bring: cemiray model folders, arcface_torch `.pth`
state dicts, insightface ONNX recognisers (`w600k_r50.onnx`, ...) and the dlib judge.

Images go in as uint8 RGB (N x H x W x 3) or as float tensors already normalised to [-1, 1]
(N x 3 x H x W); embeddings come out as unit vectors. Nothing is ever downloaded: a missing
file is an error.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import torch
import torch.nn.functional as F
from fsspec.implementations.local import LocalFileSystem
from torch import nn

from cemiray.data import pixels, storage
from cemiray.models.hashing import model_hash
from cemiray.models.iresnet import LAYERS, get_backbone
from cemiray.models.recognizer_base import (
    Recognizer,
    check_normalised_tensor,
    check_uint8_images,
    resize_square,
)
from cemiray.models.serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    parse_config,
    parse_safetensors,
    parse_torch_state_dict,
)


class TorchRecognizer(Recognizer):
    """An IResNet (or any module mapping N x 3 x S x S in [-1, 1] to N x D) with frozen weights,
    in eval mode. `embed_tensor` is differentiable with respect to its input."""

    def __init__(self, model: nn.Module, content_hash: str, input_size: int, dim: int,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.content_hash = content_hash
        self.input_size = int(input_size)
        self.dim = int(dim)

    @classmethod
    def from_folder(cls, url: str, device: str | torch.device = "cpu") -> TorchRecognizer:
        """A cemiray model folder: config.json (backbone name + options) + model.safetensors."""
        config_url, weights_url = storage.join(url, CONFIG_NAME), storage.join(url, WEIGHTS_NAME)
        for needed in (config_url, weights_url):
            if not storage.exists(needed):
                raise FileNotFoundError(f"{needed}: missing from the model folder")
        config = parse_config(storage.read_bytes(config_url), config_url)
        weights = storage.read_bytes(weights_url)
        options = {k: v for k, v in config.items() if k != "name"}
        try:
            model = get_backbone(str(config.get("name")), **options)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_url}: cannot build the backbone ({exc})") from exc
        load_strict(model, parse_safetensors(weights, weights_url), weights_url)
        return cls(model, model_hash(url), model.input_size, model.num_features, device)

    @classmethod
    def from_state_dict_file(cls, url: str, arch: str, device: str | torch.device = "cpu",
                             **backbone_options: Any) -> TorchRecognizer:
        """An arcface_torch `backbone.pth` (a plain state dict) for the named architecture."""
        if arch not in LAYERS:
            raise ValueError(f"{url}: unknown arch {arch!r}; available: {', '.join(LAYERS)}")
        if not storage.exists(url):
            raise FileNotFoundError(f"{url}: no such file")
        data = storage.read_bytes(url)
        model = get_backbone(arch, **backbone_options)
        load_strict(model, parse_torch_state_dict(data, url), url)
        return cls(model, model_hash(url), model.input_size, model.num_features, device)

    def _features(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            x = resize_square(x.to(self.device, torch.float32), self.input_size)
            return self.model(x).float().cpu().numpy()

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        check_normalised_tensor(x)
        features = self.model(resize_square(x.to(self.device, torch.float32), self.input_size))
        return F.normalize(features.float(), dim=1).to(x.device)


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{name}: weights do not fit the architecture: {exc}") from exc


class OnnxRecognizer(Recognizer):
    """An insightface ONNX recogniser (ArcFaceONNX). insightface feeds BGR uint8 images and
    normalises them itself, so uint8 input is converted RGB -> BGR and handed over unchanged.
    Not differentiable."""

    def __init__(self, url: str, device: str | torch.device = "cpu") -> None:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        if not storage.exists(url):
            raise FileNotFoundError(f"{url}: no such file")
        data = storage.read_bytes(url)
        self.content_hash = model_hash(url)
        self.device = torch.device(device)
        path = self._local_path(url, data)
        use_gpu = self.device.type == "cuda"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else [
            "CPUExecutionProvider"]
        try:
            model = get_model(path, providers=providers)
        except Exception as exc:  # onnx/onnxruntime raise many unrelated types on bad files
            raise CheckpointError(f"{url}: not a loadable ONNX model ({exc})") from exc
        if not isinstance(model, ArcFaceONNX):
            raise CheckpointError(
                f"{url}: not a face-recognition model for insightface (got "
                f"{type(model).__name__}; expected a square input of at least 112 px)"
            )
        model.prepare(ctx_id=(self.device.index or 0) if use_gpu else -1)
        self.model = model
        self.input_size = int(model.input_size[0])
        self.dim = int(model.output_shape[1])

    def _local_path(self, url: str, data: bytes) -> str:
        """onnxruntime opens files by path: a remote or in-memory URL is copied to a temporary
        file that lives as long as this object."""
        fs, path = storage.filesystem(url)
        if isinstance(fs, LocalFileSystem):
            return path
        handle, temp_path = tempfile.mkstemp(suffix=".onnx")
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        weakref.finalize(self, os.remove, temp_path)
        return temp_path

    def embed(self, images: np.ndarray | torch.Tensor, normalize: bool = True,
              batch_size: int = 64) -> np.ndarray:
        if not isinstance(images, np.ndarray):
            return super().embed(images, normalize, batch_size)
        check_uint8_images(images)
        outputs = []
        for start in range(0, len(images), batch_size):
            bgr = [np.ascontiguousarray(im[:, :, ::-1]) for im in images[start:start + batch_size]]
            outputs.append(np.asarray(self.model.get_feat(bgr), dtype=np.float32))
        features = (np.concatenate(outputs) if outputs
                    else np.zeros((0, self.dim), dtype=np.float32))
        if normalize:
            features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return features

    def _features(self, x: torch.Tensor) -> np.ndarray:
        values = pixels.denormalize(resize_square(x.float().cpu(), self.input_size))
        return np.asarray(self.model.forward(values.numpy()), dtype=np.float32)

    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        check_normalised_tensor(x)
        if x.requires_grad:
            raise TypeError("an ONNX recogniser is not differentiable; use a torch model "
                            "(cemiray folder or .pth) as the identity encoder of a loss")
        return torch.from_numpy(self.embed(x)).to(x.device)


def split_query(uri: str) -> tuple[str, dict[str, str]]:
    """'path.pth?arch=iresnet50' -> ('path.pth', {'arch': 'iresnet50'})."""
    base, _, query = uri.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, strict_parsing=bool(query)).items()}
    return base, options


def load_recognizer(uri: str, device: str | torch.device = "cpu", arch: str | None = None,
                    **backbone_options: Any) -> Recognizer:
    """A recogniser from a cemiray model folder, an arcface_torch `.pth` state dict (needs an
    architecture: `?arch=iresnet50` in the URI or `arch=`; `input_size`/`num_features` likewise)
    an insightface-compatible `.onnx` file, or `dlib` (dlib's ResNet, the optional independent
    judge for real faces)."""
    if str(uri) == "dlib":
        from cemiray.models.dlib_recognizer import DlibRecognizer

        return DlibRecognizer(device)
    try:
        base, query = split_query(str(uri))
    except ValueError as exc:
        raise ValueError(f"{uri}: malformed query string ({exc})") from exc
    if base.endswith(".onnx"):
        if query:
            raise ValueError(f"{uri}: an .onnx recogniser takes no options, got {sorted(query)}")
        return OnnxRecognizer(base, device)
    if base.endswith((".pth", ".pt")):
        query_arch = query.pop("arch", None)
        if arch and query_arch and arch != query_arch:
            raise ValueError(f"{uri}: arch={arch!r} conflicts with the URI's arch={query_arch!r}")
        chosen = arch or query_arch
        if not chosen:
            raise ValueError(f"{uri}: a .pth state dict needs its architecture "
                             f"(?arch=... or arch=; one of {', '.join(LAYERS)})")
        unknown = set(query) - {"input_size", "num_features"}
        if unknown:
            raise ValueError(f"{uri}: unknown options {sorted(unknown)}")
        options = {k: int(v) for k, v in query.items()} | backbone_options
        return TorchRecognizer.from_state_dict_file(base, chosen, device, **options)
    if storage.exists(storage.join(base, CONFIG_NAME)):
        return TorchRecognizer.from_folder(base, device)
    if not storage.exists(base):
        raise FileNotFoundError(f"{uri}: no such file or folder")
    raise ValueError(f"{uri}: not a recogniser; expected a folder with {CONFIG_NAME} + "
                     f"{WEIGHTS_NAME}, a .pth state dict or an .onnx file")


def align_face(image_rgb: np.ndarray, landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a face to the ArcFace template from its 5 landmarks (eyes, nose, mouth corners, in
    x, y pixels); returns a uint8 RGB size x size crop."""
    from insightface.utils.face_align import norm_crop

    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or (
            image_rgb.ndim != 3 or image_rgb.shape[2] != 3):
        raise ValueError("image_rgb must be a uint8 H x W x 3 array, got "
                         f"{getattr(image_rgb, 'dtype', type(image_rgb))} "
                         f"{getattr(image_rgb, 'shape', '')}")
    if size % 112 != 0 and size % 128 != 0:
        raise ValueError(f"size={size}: the ArcFace template scales to multiples of 112 or 128")
    landmarks = np.asarray(landmarks5, dtype=np.float32)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks5 must be 5 x 2 (x, y), got shape {landmarks.shape}")
    bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    aligned = norm_crop(bgr, landmarks, image_size=size)
    return np.ascontiguousarray(aligned[:, :, ::-1])
