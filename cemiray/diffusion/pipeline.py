"""Sampling from the CemiFace generator: identity embedding + similarity m + seed → face image.

`CemiFacePipeline` is a diffusers `DiffusionPipeline` with three components (`unet`,
`condition_encoder`, `scheduler`), so `save_pretrained`/`from_pretrained` write and read a
folder with one sub-folder per component (config.json + safetensors). Load it with
`CemiFacePipeline.from_pretrained(folder)` (or `load_pipeline(url)` for any fsspec URL): the
generic `DiffusionPipeline.from_pretrained` looks the class name up inside diffusers and fails.
Each image's noise comes from its own `torch.Generator(seed)` on the CPU, so an image depends on
its seed, not on the batch it was generated in nor on the device — up to float rounding: matrix
kernels pick different blockings for different batch sizes (≈1e-5 after a few steps on a CPU),
so bitwise equality holds only between runs with the same batch.
"""

from __future__ import annotations

import numbers
import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from torch import Tensor

from cemiray.data import pixels, storage
from cemiray.diffusion.condition_encoder import CemiConditionEncoder
from cemiray.diffusion.similarity_loss import IdentityEncoder, as_identity_encoder
from cemiray.models.noise_seeds import check_noise_seeds

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}
UNIT_NORM_TOLERANCE = 1e-3


@dataclass
class CemiFaceOutput:
    """`images`: uint8 N×H×W×3 (output_type "np") or float32 N×3×H×W in [−1, 1] on the CPU
    ("pt"). `similarity`: cosine between each image's recogniser embedding and its identity
    embedding (only when a recogniser was given)."""

    images: np.ndarray | Tensor
    similarity: np.ndarray | None


class CemiFacePipeline(DiffusionPipeline):
    """Identity- and similarity-conditioned sampler (CemiFace: DDIM, 20 steps, no guidance;
    similarity guidance optional)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        condition_encoder: CemiConditionEncoder,
        scheduler: DDIMScheduler,
    ):
        super().__init__()
        check_components(unet, condition_encoder)
        self.register_modules(unet=unet, condition_encoder=condition_encoder, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        id_embeddings: Tensor,
        similarity: float | Sequence[float] | Tensor,
        seeds: Sequence[int],
        num_inference_steps: int = 20,
        scheduler: str | None = "ddim",
        variation: Tensor | Sequence[dict | None] | None = None,
        recognizer: IdentityEncoder | None = None,
        output_type: str = "np",
        device: torch.device | str | None = None,
        autocast: bool = True,
        guidance_scale: float = 1.0,
        guidance_m: float = 0.0,
    ) -> CemiFaceOutput:
        """Generate one image per row of `id_embeddings` (N×D, unit norm) at similarity m (one
        value for all or one per image), image i drawn from `seeds[i]`.

        `scheduler`: a name in SCHEDULERS built from the stored scheduler's config, or None for
        the stored scheduler as it is. `device` must be where the pipeline lives (None: there);
        on CUDA the UNet runs channels_last under bf16 autocast (`autocast=False` keeps fp32), on
        the CPU always fp32. Everything is validated before any network runs.

        Similarity guidance (`guidance_scale` g ≠ 1): each step the UNet also runs on the same
        identity at the reference similarity `guidance_m` and the prediction becomes
        pred(m_ref) + g·(pred(m) − pred(m_ref)), classifier-free guidance along the m axis: it
        spreads achieved similarities away from m_ref (at twice the UNet cost). g = 1 is the
        plain CemiFace sampler.

        `variation`: N×A normalised values (NaN: unspecified) or, when the encoder carries a
        variation spec, one request per image by name ({"glasses": true, "yaw": 20.0}, None:
        nothing requested), checked against the trained ranges.
        """
        device = self._check_device(device)
        n = validate_embeddings(id_embeddings, self.condition_encoder.config.id_dim)
        sims = validate_similarity(similarity, n)
        seeds = validate_seeds(seeds, n)
        variation = self._check_variation(variation, n)
        if not isinstance(num_inference_steps, numbers.Integral) or num_inference_steps < 1:
            raise ValueError(
                f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}"
            )
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        guidance_scale, guidance_m = validate_guidance(guidance_scale, guidance_m)
        sampler = self._make_scheduler(scheduler)
        if recognizer is not None:
            as_identity_encoder(recognizer)

        cuda = device.type == "cuda"
        ids = torch.as_tensor(id_embeddings).to(device, torch.float32)
        sims = sims.to(device)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        size = self.unet.config.sample_size
        noise = torch.cat(
            [torch.randn((1, 3, size, size), generator=g, dtype=torch.float32) for g in generators]
        )
        variation = None if variation is None else variation.to(device)
        condition = self.condition_encoder(ids, sims, variation=variation)
        tokens, pooled = condition.tokens, condition.pooled
        guided = guidance_scale != 1.0
        if guided:
            reference = self.condition_encoder(
                ids, torch.full_like(sims, guidance_m), variation=variation
            )
            tokens = torch.cat([tokens, reference.tokens])
            pooled = None if pooled is None else torch.cat([pooled, reference.pooled])

        # The schedule stays on the CPU (the schedulers index their CPU tables with t, which on
        # a GPU would sync every step); the UNet gets a device copy made once, before the loop.
        sampler.set_timesteps(int(num_inference_steps), device="cpu")
        if hasattr(sampler, "set_begin_index"):
            sampler.set_begin_index(0)
        unet_timesteps = sampler.timesteps.to(device)
        x = noise.to(device) * sampler.init_noise_sigma
        if cuda:
            self.unet.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        precision = (
            torch.autocast("cuda", dtype=torch.bfloat16) if cuda and autocast else nullcontext()
        )

        for i, t in enumerate(sampler.timesteps):
            model_input = sampler.scale_model_input(x, t)
            if guided:
                model_input = torch.cat([model_input, model_input])
            with precision:
                prediction = self.unet(
                    model_input,
                    unet_timesteps[i],
                    encoder_hidden_states=tokens,
                    class_labels=pooled,
                ).sample
            if guided:
                at_m, at_reference = prediction.float().chunk(2)
                prediction = at_reference + guidance_scale * (at_m - at_reference)
            x = sampler.step(prediction.float(), t, x, generator=generators).prev_sample

        x = x.float().clamp(-1.0, 1.0).contiguous()
        achieved = None
        if recognizer is not None:
            embedded = F.normalize(as_identity_encoder(recognizer)(x).float(), dim=1)
            achieved = (embedded * ids).sum(dim=1).cpu().numpy()
        if output_type == "pt":
            return CemiFaceOutput(images=x.cpu(), similarity=achieved)
        return CemiFaceOutput(images=pixels.to_numpy(x), similarity=achieved)

    def _check_device(self, device: torch.device | str | None) -> torch.device:
        here = self.unet.device
        if self.condition_encoder.device != here:
            raise ValueError(
                f"the condition encoder is on {self.condition_encoder.device} but the UNet on "
                f"{here}; move the whole pipeline with .to(device)"
            )
        if device is None:
            return here
        device = torch.device(device)
        same = device.type == here.type and (device.index is None or device.index == here.index)
        if not same:
            raise ValueError(
                f"device {device} differs from the pipeline's device {here}; move the pipeline "
                "with .to(device) first"
            )
        return here

    def _check_variation(self, variation: Tensor | None, n: int) -> Tensor | None:
        attrs = self.condition_encoder.config.num_variation_attrs
        if variation is None:
            return None
        if attrs == 0:
            raise ValueError(
                "variation given but the condition encoder has no variation attributes"
            )
        if isinstance(variation, (list, tuple)) and all(
                v is None or isinstance(v, dict) for v in variation):
            spec = self.condition_encoder.variation
            if spec is None:
                raise ValueError("variation given by name but the condition encoder has no "
                                 "variation_spec; give normalised values")
            if len(variation) != n:
                raise ValueError(f"variation must hold {n} requests, got {len(variation)}")
            variation = spec.encode_requests(list(variation))
        variation = torch.as_tensor(variation, dtype=torch.float32)
        if variation.shape != (n, attrs):
            raise ValueError(f"variation must be {n}×{attrs}, got {tuple(variation.shape)}")
        if torch.isinf(variation).any():
            raise ValueError("variation holds inf (NaN marks an unspecified attribute)")
        return variation

    def _make_scheduler(self, name: str | None):
        """A fresh scheduler for one call, so calls never share step state."""
        if name is None:
            return type(self.scheduler).from_config(self.scheduler.config)
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}")
        cls, overrides = SCHEDULERS[name]
        return cls.from_config(self.scheduler.config, **overrides)


def check_components(unet: UNet2DConditionModel, encoder: CemiConditionEncoder) -> None:
    """Raise if the encoder's outputs do not fit the UNet's conditioning inputs."""
    ucfg, ecfg = unet.config, encoder.config
    if ucfg.in_channels != 3 or ucfg.out_channels != 3:
        raise ValueError(
            f"the UNet must map 3 to 3 channels (pixel space), got {ucfg.in_channels} → "
            f"{ucfg.out_channels}"
        )
    dims = ucfg.cross_attention_dim
    dims = set(dims) if isinstance(dims, (list, tuple)) else {dims}
    if dims != {ecfg.cross_attention_dim}:
        raise ValueError(
            f"UNet cross_attention_dim {ucfg.cross_attention_dim} != condition encoder "
            f"cross_attention_dim {ecfg.cross_attention_dim}"
        )
    if ucfg.class_embed_type is None:
        if ecfg.pooled_dim is not None:
            raise ValueError(
                "the condition encoder has a pooled output but the UNet has no class embedding; "
                "build both from one preset"
            )
    elif ucfg.class_embed_type != "projection" or (
        ucfg.projection_class_embeddings_input_dim != ecfg.pooled_dim
    ):
        raise ValueError(
            f"UNet class embedding ({ucfg.class_embed_type}, "
            f"{ucfg.projection_class_embeddings_input_dim}) does not take the encoder's pooled "
            f"vector of size {ecfg.pooled_dim}"
        )


def validate_embeddings(id_embeddings: Tensor, dim: int) -> int:
    if not isinstance(id_embeddings, (Tensor, np.ndarray)):
        raise TypeError(f"id_embeddings must be a tensor, got {type(id_embeddings).__name__}")
    emb = torch.as_tensor(id_embeddings)
    if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] != dim:
        raise ValueError(f"id_embeddings must be N×{dim} with N >= 1, got {tuple(emb.shape)}")
    if not emb.is_floating_point() or not torch.isfinite(emb).all():
        raise ValueError("id_embeddings must be finite floating-point values")
    norms = emb.double().norm(dim=1)
    bad = torch.nonzero((norms - 1).abs() > UNIT_NORM_TOLERANCE).flatten()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"id_embeddings must have unit norm (±{UNIT_NORM_TOLERANCE}); row {i} has norm "
            f"{float(norms[i]):.6f} ({len(bad)} rows off)"
        )
    return emb.shape[0]


def validate_similarity(similarity: float | Sequence[float] | Tensor, n: int) -> Tensor:
    if isinstance(similarity, bool):
        raise TypeError("similarity must be a number in [-1, 1], not a bool")
    if isinstance(similarity, numbers.Real):
        values = torch.full((n,), float(similarity), dtype=torch.float32)
    else:
        try:
            values = torch.as_tensor(similarity, dtype=torch.float32).cpu()
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"similarity must be a number or a sequence of numbers: {exc}"
            ) from exc
        if values.ndim == 0:
            values = values.expand(n).clone()
        if values.shape != (n,):
            raise ValueError(
                f"similarity must be one value or {n} values, got shape {tuple(values.shape)}"
            )
    if not torch.isfinite(values).all():
        raise ValueError("similarity holds NaN or inf")
    if (values.abs() > 1).any():
        raise ValueError(
            f"similarity m must lie in [-1, 1], got {values[values.abs() > 1].tolist()}"
        )
    return values


def validate_guidance(scale: float, reference_m: float) -> tuple[float, float]:
    """(guidance_scale, guidance_m) as floats; the scale finite and >= 0, m_ref in [−1, 1]."""
    for name, value in (("guidance_scale", scale), ("guidance_m", reference_m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if scale < 0:
        raise ValueError(f"guidance_scale must be >= 0 (1: no guidance), got {scale}")
    if abs(reference_m) > 1:
        raise ValueError(f"guidance_m must lie in [-1, 1], got {reference_m}")
    return float(scale), float(reference_m)


def validate_seeds(seeds: Sequence[int], n: int) -> list[int]:
    return check_noise_seeds(seeds, n)


def identity_embeddings_from_images(
    recognizer: IdentityEncoder, images: np.ndarray | Tensor, device: torch.device | str = "cpu"
) -> Tensor:
    """Unit identity embeddings (N×D float32) of uint8 N×H×W×3 images or float N×3×H×W images
    in [−1, 1], e.g. the inquiry images that define new identities."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images: expected uint8 N×H×W×3, got {images.dtype} {tuple(images.shape)}"
            )
        x = pixels.from_numpy(images)
    elif isinstance(images, Tensor):
        if not images.is_floating_point() or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images: expected float N×3×H×W in [-1, 1], got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if not torch.isfinite(images).all() or images.abs().max() > 1.0 + 1e-6:
            raise ValueError("images: float images must be finite and lie in [-1, 1]")
        x = images.float()
    else:
        raise TypeError(f"images must be a numpy array or a tensor, got {type(images).__name__}")
    if x.shape[0] == 0:
        raise ValueError("images: empty batch")
    encode = as_identity_encoder(recognizer)
    with torch.no_grad():
        embeddings = encode(x.to(device)).float()
    if embeddings.ndim != 2 or embeddings.shape[0] != x.shape[0]:
        raise ValueError(
            f"recognizer returned shape {tuple(embeddings.shape)} for {x.shape[0]} images"
        )
    return F.normalize(embeddings, dim=1)


def save_pipeline(pipe: CemiFacePipeline, url: str) -> None:
    """Write the pipeline folder to any fsspec URL. Files are staged locally, copied one by one
    through atomic renames, and model_index.json goes last: a folder that has it is complete."""
    with tempfile.TemporaryDirectory(prefix="cemiface-save-") as staging:
        pipe.save_pretrained(staging)
        files = []
        for root, _, names in os.walk(staging):
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), staging))
        files.sort(key=lambda rel: (rel == "model_index.json", rel))
        for rel in files:
            with (
                open(os.path.join(staging, rel), "rb") as src,
                storage.atomic_open(storage.join(url, *rel.split(os.sep)), "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, length=16 << 20)


def load_pipeline(url: str, **from_pretrained_kwargs) -> CemiFacePipeline:
    """Read a pipeline folder written by `save_pipeline`/`save_pretrained` from an fsspec URL."""
    index = storage.join(url, "model_index.json")
    if not storage.exists(index):
        raise storage.StorageError(f"{url}: not a CemiFace pipeline folder (no model_index.json)")
    fs, path = storage.filesystem(url)
    if storage.protocol_prefix(url) in ("", "file://"):
        return CemiFacePipeline.from_pretrained(path, **from_pretrained_kwargs)
    with tempfile.TemporaryDirectory(prefix="cemiface-load-") as staging:
        for remote in fs.find(path):
            rel = posixpath.relpath(remote, path)
            local = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(remote, local)
        return CemiFacePipeline.from_pretrained(staging, **from_pretrained_kwargs)
