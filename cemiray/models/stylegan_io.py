"""StyleGAN folders on storage (models): config.json + safetensors, checked before any use.

A generator folder holds `generator.safetensors` (the EMA generator's weights, buffers w̄ and
the fixed noise included), optionally `discriminator.safetensors`, and `config.json`, written
last, so a folder that has it is complete:

    {"kind": "cemiray-stylegan", "format": 1, "preset": {...every StyleGANPreset field...},
     "meta": {...what made it: step, images seen, data...}}

Loading refuses, with a message naming the folder and what is wrong, and before building or
sampling anything: a folder without config.json or whose config.json is another kind's (a
recogniser's folder also has a config.json), a preset that does not build, a weights file that
is missing or not safetensors, and any tensor missing, unexpected, of the wrong shape or dtype,
or not finite. Only safetensors are read: nothing in a folder can run code."""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from cemiray.data import storage
from cemiray.models.serialization import CheckpointError, parse_config, parse_safetensors
from cemiray.models.stylegan import (
    Discriminator,
    Generator,
    StyleGANPreset,
    resolve_stylegan_preset,
)

CONFIG_NAME = "config.json"
MARKER_KIND = "cemiray-stylegan"
FORMAT = 1
GENERATOR_WEIGHTS = "generator.safetensors"
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
MADE_BY = "`cemiray train-gan` writes one at OUT/generator"


class GANFolderError(CheckpointError):
    """A folder is not a usable StyleGAN folder; the message names the folder and the tensor."""


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous float32 CPU tensors, ready for safetensors."""
    return {k: v.detach().float().cpu().contiguous().clone()
            for k, v in module.state_dict().items()}


def save_gan(url: str, generator: Generator, discriminator: Discriminator | None = None,
             meta: dict[str, Any] | None = None) -> str:
    """Write the folder (weights first, config.json last, each atomically); returns `url`."""
    marker = {"kind": MARKER_KIND, "format": FORMAT, "preset": generator.preset.to_dict(),
              "meta": meta or {}}
    try:
        text = json.dumps(marker, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"{url}: meta is not JSON-serialisable ({exc})") from exc
    storage.makedirs(url)
    storage.atomic_write_bytes(storage.join(url, GENERATOR_WEIGHTS),
                               safetensors_save(state_tensors(generator)))
    if discriminator is not None:
        storage.atomic_write_bytes(storage.join(url, DISCRIMINATOR_WEIGHTS),
                                   safetensors_save(state_tensors(discriminator)))
    storage.atomic_write_text(storage.join(url, CONFIG_NAME), text + "\n")
    return url


def read_gan_config(url: str) -> tuple[StyleGANPreset, dict[str, Any]]:
    """(preset, meta) of a StyleGAN folder; refuses a folder that is not one."""
    config_url = storage.join(url, CONFIG_NAME)
    if not storage.exists(config_url):
        raise GANFolderError(f"{url}: not a StyleGAN generator folder (no {CONFIG_NAME}; "
                             f"{MADE_BY})")
    try:
        config = parse_config(storage.read_bytes(config_url), config_url)
    except CheckpointError as exc:
        raise GANFolderError(str(exc)) from None
    if config.get("kind") != MARKER_KIND:
        raise GANFolderError(f"{url}: not a StyleGAN generator folder ({CONFIG_NAME} has kind="
                             f"{config.get('kind')!r}, not {MARKER_KIND!r}; {MADE_BY})")
    if config.get("format") != FORMAT:
        raise GANFolderError(f"{config_url}: format {config.get('format')!r}; this cemiray "
                             f"reads format {FORMAT}")
    if not isinstance(config.get("preset"), dict):
        raise GANFolderError(f"{config_url}: no 'preset' mapping")
    try:
        preset = resolve_stylegan_preset(config["preset"])
    except (TypeError, ValueError) as exc:
        raise GANFolderError(f"{config_url}: its preset does not build ({exc})") from None
    meta = config.get("meta") if isinstance(config.get("meta"), dict) else {}
    return preset, meta


def check_state(module: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise GANFolderError unless `tensors` holds exactly `module`'s state, tensor for tensor,
    with the right shapes, floating dtypes and finite values; names the first bad tensor."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = sorted(k for k in tensors if k not in expected)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GANFolderError(f"{where}: tensor {missing[0]!r} is missing{more}; the weights do "
                             "not belong to this architecture")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise GANFolderError(f"{where}: unexpected tensor {extra[0]!r}{more}; the weights do "
                             "not belong to this architecture")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise GANFolderError(f"{where}: tensor {key!r} has shape {tuple(got.shape)}, the "
                                 f"architecture needs {tuple(want.shape)}")
        if not got.is_floating_point():
            raise GANFolderError(f"{where}: tensor {key!r} is {got.dtype}, not floating point")
        if not bool(torch.isfinite(got).all()):
            raise GANFolderError(f"{where}: tensor {key!r} holds non-finite values")


def load_checked(module: nn.Module, url: str, name: str) -> None:
    """Read `url/name` (safetensors), check it against `module` and load it."""
    weights_url = storage.join(url, name)
    if not storage.exists(weights_url):
        raise GANFolderError(f"{url}: {name} is missing")
    try:
        tensors = parse_safetensors(storage.read_bytes(weights_url), weights_url)
    except CheckpointError as exc:
        raise GANFolderError(str(exc)) from None
    check_state(module, tensors, weights_url)
    module.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)


def load_gan(url: str, device: str | torch.device = "cpu", discriminator: bool = False
             ) -> tuple[Generator, Discriminator | None, dict[str, Any]]:
    """(generator in eval mode, discriminator or None, meta) of a folder written by `save_gan`;
    every check of the module docstring runs first."""
    preset, meta = read_gan_config(url)
    generator = Generator(preset)
    load_checked(generator, url, GENERATOR_WEIGHTS)
    disc = None
    if discriminator:
        disc = Discriminator(preset)
        load_checked(disc, url, DISCRIMINATOR_WEIGHTS)
        disc = disc.to(device).eval()
    return generator.to(device).eval(), disc, meta
