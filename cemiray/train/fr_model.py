"""train-fr's networks (train): the backbone + head module and each worker's Partial FC shard.

train-fr's networks and Partial FC state (train part): the backbone + head module, and the
centre shard each Ray Train worker trains beside its DeepSpeed engine.

Imported by the worker loop only (torch at module level): `cemiray train-fr --dry-run` stays
torch-free. The shard lives outside DeepSpeed because its rows differ on every rank: an
all-reduce of its gradient, or a broadcast of its weights, would be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cemiray.models.iresnet import get_backbone
from cemiray.models.margin_heads import MarginSoftmaxHead, get_margin, get_margin_head
from cemiray.models.partial_fc import PartialFC, shard_range

SHARD_FOLDER = "partial_fc"


class FaceRecognitionModel(nn.Module):
    """Backbone + margin head; forward returns the loss. Without Partial FC this is what
    DeepSpeed wraps; with it DeepSpeed wraps `backbone` and `head` is the worker's shard."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), labels)


def build_face_model(*, backbone: str, input_size: int, embedding_dim: int, width: int,
                     head: str, num_classes: int, scale: float, margin: float,
                     partial_fc: bool = False, sample_rate: float = 1.0,
                     seed: int = 0, dtype: str = "float32") -> FaceRecognitionModel:
    """The train-fr model from torch's global RNG. With `partial_fc` the head is this process's
    Partial FC shard (the whole head outside torch.distributed); on one worker with sample_rate
    1 it starts from, and computes, exactly the plain head's values. On several workers each
    shard draws its centres from its own generator (seed, rank). `dtype="bfloat16"` runs the
    backbone's trunk under bf16 autocast over float32 weights."""
    net = get_backbone(backbone, input_size=input_size, num_features=embedding_dim, width=width,
                       dtype=dtype)
    if not partial_fc:
        return FaceRecognitionModel(net, get_margin_head(head, num_classes=num_classes,
                                                         embedding_dim=embedding_dim,
                                                         s=scale, m=margin))
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    generator = None
    if world > 1:
        generator = torch.Generator().manual_seed(seed * 1000 + dist.get_rank())
    shard = PartialFC(get_margin(head, s=scale, m=margin), embedding_dim, num_classes,
                      sample_rate=sample_rate, generator=generator)
    return FaceRecognitionModel(net, shard)


def recut(states: list[Any], counts: list[int], start: int, count: int) -> Any:
    """Rows start..start+count-1 of per-shard states (in class order; shard i holds counts[i]
    rows). Tensors whose first dimension is every shard's row count are concatenated and cut;
    every other value (steps, hyper-parameters) comes from the first shard."""
    first = states[0]
    if isinstance(first, dict):
        return {key: recut([s[key] for s in states], counts, start, count) for key in first}
    rows = all(isinstance(s, torch.Tensor) and s.ndim >= 1 and s.shape[0] == n
               for s, n in zip(states, counts))
    if rows:
        return torch.cat(states)[start:start + count].clone()
    return first


class CentreShard:
    """One worker's Partial FC: its rows of the class centres, their optimizer and lr schedule.

    DeepSpeed never sees these parameters. Each rank saves its rows as its own file of the
    checkpoint (`partial_fc/rank-<r>.pt`, merged with the other ranks' files by Ray) and, on
    resume, re-cuts the rows it owns from all the files, so a run may resume on another number
    of workers."""

    def __init__(self, head: PartialFC, optimizer: torch.optim.Optimizer, lr_lambda) -> None:
        self.head, self.optimizer = head, optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def step(self) -> None:
        """The shard's optimizer step, at the engine's gradient-accumulation boundary."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def state_dict(self) -> dict:
        head = self.head
        return {"class_start": head.class_start, "num_local": head.num_local,
                "num_classes": head.num_classes, "head": head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, folder: str) -> None:
        path = Path(folder) / SHARD_FOLDER / f"rank-{self.head.rank:05d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path)

    def load(self, folder: str) -> None:
        files = sorted((Path(folder) / SHARD_FOLDER).glob("rank-*.pt"))
        if not files:
            raise ValueError(f"{folder}: no Partial FC centres in this checkpoint (was it "
                             "trained without partial_fc?)")
        states = sorted((torch.load(f, map_location="cpu", weights_only=True) for f in files),
                        key=lambda s: s["class_start"])
        head = self.head
        counts = [int(s["num_local"]) for s in states]
        starts = [int(s["class_start"]) for s in states]
        if {s["num_classes"] for s in states} != {head.num_classes} or sum(counts) != \
                head.num_classes or starts != [sum(counts[:i]) for i in range(len(counts))]:
            raise ValueError(f"{folder}: the Partial FC shards {list(zip(starts, counts))} do "
                             f"not cover the {head.num_classes} classes of this run")
        mine = recut(states, counts, head.class_start, head.num_local)
        head.load_state_dict(mine["head"])
        self.optimizer.load_state_dict(mine["optimizer"])
        self.scheduler.load_state_dict(mine["scheduler"])

    def full_head(self) -> MarginSoftmaxHead:
        """The whole head (every rank's rows, in class order) on every rank; all must call it."""
        head = self.head
        weight = head.weight.detach().float()
        if head.distributed:
            rows = shard_range(head.num_classes, 0, head.world_size)[1]
            padded = weight.new_zeros(rows, head.embedding_dim)
            padded[:head.num_local] = weight
            parts = [torch.empty_like(padded) for _ in range(head.world_size)]
            dist.all_gather(parts, padded, group=head.group)
            weight = torch.cat([p[:shard_range(head.num_classes, r, head.world_size)[1]]
                                for r, p in enumerate(parts)])
        full = MarginSoftmaxHead(head.num_classes, head.embedding_dim, head.margin)
        full = full.to(weight.device)
        full.load_state_dict({**head.state_dict(), "weight": weight})
        return full
