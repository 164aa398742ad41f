"""What training a StyleGAN needs beyond the networks (models): losses, EMA, training state.

* Losses (StyleGAN2): the non-saturating logistic loss, softplus(−D(G(z))) for G and
  softplus(D(G(z))) + softplus(−D(x)) for D, and the R1 penalty ‖∇ₓD(x)‖² on real images,
  weighted γ/2 and applied lazily: every `r1_every` steps, scaled by `r1_every`, with D's Adam lr
  and β's scaled by r1_every/(r1_every+1) (StyleGAN2, appendix B).
* EMA of the generator counted in images (half-life `ema_kimg` thousand images, ramped up over
  the first images as StyleGAN2-ADA does), so it does not change with the number of workers.
* The training state as a folder with no pickle in it: `generator`, `discriminator`,
  `generator_ema`, `optimizer_G`, `optimizer_D` `.safetensors` (an optimizer's per-parameter
  tensors named `<index>.<name>`) and `gan_state.json`, written last (the kind marker, the
  preset, step, images seen and the optimizers' param groups). Loading checks the marker, the
  preset against the one being trained, and every tensor (cemiray.models.stylegan_io.check_state)
  before it changes anything."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_save
from torch import nn

from cemiray.models.serialization import CheckpointError, parse_config, parse_safetensors
from cemiray.models.stylegan import Discriminator, Generator, resolve_stylegan_preset
from cemiray.models.stylegan_io import GANFolderError, check_state, state_tensors

STATE_KIND = "cemiray-gan-checkpoint"
STATE_NAME = "gan_state.json"
ADAM_BETAS = (0.0, 0.99)
NETWORKS = ("generator", "discriminator", "generator_ema")


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over the batch of ‖∇ₓD(x)‖², the logits D(x)); the gradient is built with
    create_graph, so backpropagating the penalty differentiates D twice."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean(), logits


def lazy_gain(every: int) -> float:
    """every/(every+1): how a lazily regularised network's Adam lr and β's are scaled."""
    return every / (every + 1) if every > 1 else 1.0


def build_optimizers(generator: Generator, discriminator: Discriminator, lr: float,
                     r1_every: int) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam with β = (0, 0.99) for both; D's lr and β's adjusted for the lazy R1."""
    c = lazy_gain(r1_every)
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=ADAM_BETAS, eps=1e-8)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr * c,
                             betas=tuple(b**c for b in ADAM_BETAS), eps=1e-8)
    return opt_g, opt_d


def ema_beta(batch_images: int, images_seen: int, ema_kimg: float, rampup: float | None
             ) -> float:
    """The EMA decay for one step of `batch_images` images: half-life ema_kimg·1000 images,
    shortened to rampup·images_seen early in training (StyleGAN2-ADA)."""
    half_life = ema_kimg * 1000
    if rampup:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_images / max(half_life, 1e-8))


def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """Parameters move towards the model's by 1 − β; buffers (w̄, fixed noise) are copied."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as (tensors named `<param index>.<name>`, JSON-able param groups)."""
    state = opt.state_dict()
    tensors = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{index}.{name}"] = value.detach().cpu().contiguous().clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in state["param_groups"]]
    return tensors, groups


def optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    groups: Any, where: str) -> dict[str, Any]:
    """The inverse of `optimizer_tensors`, checked (same groups, known parameters, moment
    tensors shaped like their parameters): a state dict for `opt.load_state_dict`."""
    params = [p for group in opt.param_groups for p in group["params"]]
    sizes = [len(g["params"]) for g in opt.param_groups]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups) or \
            [len(g.get("params", ())) for g in groups] != sizes:
        raise GANFolderError(f"{where}: its param groups do not match this architecture's")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params) or not name:
            raise GANFolderError(f"{where}: unexpected tensor {key!r}")
        shape = tuple(params[int(index)].shape)
        if name != "step" and tuple(value.shape) != shape:
            raise GANFolderError(f"{where}: tensor {key!r} has shape {tuple(value.shape)}, its "
                                 f"parameter has {shape}")
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def save_training_state(folder: str, nets: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], info: dict[str, Any]) -> None:
    """Write the training-state folder (local; Ray Train uploads it). `nets` maps NETWORKS to
    modules, `optimizers` "G"/"D" to Adams; `info` (step, images seen, ...) goes to the JSON."""
    os.makedirs(folder, exist_ok=True)
    for name in NETWORKS:
        _write(folder, f"{name}.safetensors", safetensors_save(state_tensors(nets[name])))
    groups = {}
    for key, opt in optimizers.items():
        tensors, groups[key] = optimizer_tensors(opt)
        _write(folder, f"optimizer_{key}.safetensors", safetensors_save(tensors))
    preset = nets["generator"].preset.to_dict()
    record = {"kind": STATE_KIND, "preset": preset, "param_groups": groups, **info}
    _write(folder, STATE_NAME, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def _write(folder: str, name: str, data: bytes) -> None:
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(folder, name))


def _read_tensors(folder: str, name: str, where: str) -> dict[str, torch.Tensor]:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise GANFolderError(f"{where}: {name} is missing")
    with open(path, "rb") as f:
        try:
            return parse_safetensors(f.read(), f"{where}: {name}")
        except CheckpointError as exc:
            raise GANFolderError(str(exc)) from None


def read_state_record(folder: str, what: str = "checkpoint") -> dict[str, Any]:
    """The JSON record of a training-state folder; refuses anything that is not one."""
    where = f"{what} {folder}"
    if not os.path.isdir(folder):
        raise GANFolderError(f"{where}: no such folder")
    path = os.path.join(folder, STATE_NAME)
    if not os.path.isfile(path):
        raise GANFolderError(f"{where}: not a train-gan checkpoint (no {STATE_NAME}; a run's "
                             "out/checkpoint.json names its last one)")
    with open(path, "rb") as f:
        try:
            record = parse_config(f.read(), f"{where}: {STATE_NAME}")
        except CheckpointError as exc:
            raise GANFolderError(str(exc)) from None
    if record.get("kind") != STATE_KIND:
        raise GANFolderError(f"{where}: {STATE_NAME} has kind={record.get('kind')!r}, not "
                             f"{STATE_KIND!r}")
    return record


def load_training_state(folder: str, nets: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer],
                        what: str = "checkpoint") -> dict[str, Any]:
    """Check every file of the folder against `nets` and `optimizers`, then load them; returns
    the JSON record (step, images_seen, ...). Nothing is changed unless every check passes."""
    where = f"{what} {folder}"
    record = read_state_record(folder, what)
    try:
        saved = resolve_stylegan_preset(record.get("preset") or {})
    except (TypeError, ValueError) as exc:
        raise GANFolderError(f"{where}: its preset does not build ({exc})") from None
    want = nets["generator"].preset
    diff = {k: (v, want.to_dict()[k]) for k, v in saved.to_dict().items()
            if k != "name" and v != want.to_dict()[k]}
    if diff:
        raise GANFolderError(f"{where}: it trained another architecture (saved vs configured: "
                             f"{diff})")
    for key in ("step", "images_seen"):
        if not isinstance(record.get(key), int) or record[key] < 0:
            raise GANFolderError(f"{where}: {STATE_NAME} has no valid {key!r}")
    loaded = {}
    for name in NETWORKS:
        tensors = _read_tensors(folder, f"{name}.safetensors", where)
        check_state(nets[name], tensors, f"{where}: {name}.safetensors")
        loaded[name] = tensors
    groups = record.get("param_groups") if isinstance(record.get("param_groups"), dict) else {}
    opt_states = {key: optimizer_state(opt, _read_tensors(folder, f"optimizer_{key}.safetensors",
                                                          where),
                                       groups.get(key), f"{where}: optimizer_{key}.safetensors")
                  for key, opt in optimizers.items()}
    for name in NETWORKS:  # every check passed: now load
        nets[name].load_state_dict({k: v.float() for k, v in loaded[name].items()})
    for key, opt in optimizers.items():
        opt.load_state_dict(opt_states[key])
    return record
