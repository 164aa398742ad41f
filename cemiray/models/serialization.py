"""Model weights on storage (models): cemiray folders and `.pth` state dicts, loaded safely.

Model weights on storage: cemiray folders (`config.json` + `model.safetensors`) and
arcface_torch-style `.pth` state dicts, which are pickles and so are only ever opened with
`torch.load(weights_only=True)`: a file that asks to run code is refused, never executed."""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from cemiray.data import storage

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A weights file could not be read as weights; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint references code (classes or functions) beyond plain tensors."""


def save_model_folder(module: nn.Module, url: str, config: dict[str, Any]) -> None:
    """Write `url/model.safetensors` then `url/config.json` (each atomically), so a folder whose
    config exists holds its weights."""
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"{url}: config is not JSON-serialisable ({exc})") from exc
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    storage.makedirs(url)
    storage.atomic_write_bytes(storage.join(url, WEIGHTS_NAME), safetensors_save(tensors))
    storage.atomic_write_text(storage.join(url, CONFIG_NAME), config_text + "\n")


def parse_config(data: bytes, name: str) -> dict[str, Any]:
    try:
        config = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{name}: expected a JSON object, got {type(config).__name__}")
    return config


def parse_safetensors(data: bytes, name: str) -> dict[str, torch.Tensor]:
    try:
        return safetensors_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{name}: not a valid safetensors file ({exc})") from exc


def load_model_folder(url: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config) of a folder written by `save_model_folder`."""
    config_url = storage.join(url, CONFIG_NAME)
    weights_url = storage.join(url, WEIGHTS_NAME)
    for needed in (config_url, weights_url):
        if not storage.exists(needed):
            raise FileNotFoundError(f"{needed}: missing (a model folder holds "
                                    f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    config = parse_config(storage.read_bytes(config_url), config_url)
    return parse_safetensors(storage.read_bytes(weights_url), weights_url), config


def parse_torch_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} mapping from `torch.save` bytes, loaded with weights_only=True."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code_refs = [line.strip() for line in str(exc).splitlines()
                     if "unsupported global" in line.lower()]
        if code_refs:
            raise UnsafeCheckpointError(
                f"{name}: refused, the checkpoint references code beyond tensors and plain "
                f"containers (cemiray loads .pth files with weights_only=True only): "
                f"{code_refs[0]}"
            ) from exc
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({exc})") from exc
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{name}: expected a state dict, got {type(loaded).__name__}")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
                f"flat state dict such as arcface_torch's backbone.pth"
            )
    return loaded


def load_torch_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A `.pth` state dict from any storage URL; code-bearing pickles are refused."""
    if not storage.exists(url):
        raise FileNotFoundError(f"{url}: no such file")
    return parse_torch_state_dict(storage.read_bytes(url), url)
