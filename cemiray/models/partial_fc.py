"""Partial FC (models part): class centres sharded across workers, negatives sampled.

After An et al., CVPR 2022: the class centres of a very large classification head are split
across workers, and each step uses every positive centre plus a random sample of the negative
ones. train-fr wires it in with `partial_fc` (cemiray.train.fr_model.CentreShard).

Every worker gathers the embeddings and labels of the whole global batch, computes the margin
logits against its own (sampled) shard, and the softmax is normalised across shards with two
all-reduces (max and sum). The returned loss is the global-batch mean, identical on all workers.
With world_size = 1 and sample_rate = 1 it equals `MarginSoftmaxHead` on the same data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cemiray.models.margin_heads import Margin, check_labels


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every worker's gradient for this worker's
    rows (a reduce-scatter written as all_reduce + slice, which gloo supports)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, world_size: int, rank: int,
                grad_scale: float) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.grad_scale = group, rank, grad_scale
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start:start + ctx.rows] * ctx.grad_scale, None, None, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over rows whose classes are split across workers. Each row's
    label is a column of exactly one worker's logits and -1 on the others."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, group: Any,
                distributed: bool) -> torch.Tensor:
        row_max = logits.max(dim=1, keepdim=True)[0]
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - row_max).exp()
        denominator = exp.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(denominator, op=dist.ReduceOp.SUM, group=group)
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        target = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        target[rows] = logits[rows, labels[rows]]
        if distributed:
            dist.all_reduce(target, op=dist.ReduceOp.SUM, group=group)
        ctx.save_for_backward(exp / denominator, labels)
        # -log softmax, as log-sum-exp minus the target logit: no underflow for large margins
        return (row_max.squeeze(1) + denominator.squeeze(1).log() - target).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        probs, labels = ctx.saved_tensors
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        grad_logits = probs.clone()
        grad_logits[rows, labels[rows]] -= 1.0
        return grad_logits * (grad / probs.shape[0]), None, None, None


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first class, number of classes) held by `rank`; the remainder goes to the first ranks."""
    base, extra = divmod(num_classes, world_size)
    count = base + int(rank < extra)
    return base * rank + min(rank, extra), count


class PartialFC(nn.Module):
    """Sharded class centres with negative sampling and a margin softmax loss.

    `backbone_grads_averaged`: when the backbone's gradients are averaged across workers (DDP,
    DeepSpeed), the gradient sent back to each worker's embeddings is multiplied by world_size
    so that the average is the gradient of the global-batch loss. The centre shard is owned by
    one worker and must not be wrapped in DDP. `generator` draws the initial centres (default:
    torch's global one); give each worker its own so that no two shards start alike.
    """

    def __init__(
        self,
        margin: Margin,
        embedding_dim: int,
        num_classes: int,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        group: Any = None,
        backbone_grads_averaged: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must lie in (0, 1]")
        initialised = dist.is_available() and dist.is_initialized()
        if initialised:
            rank = dist.get_rank(group) if rank is None else rank
            world_size = dist.get_world_size(group) if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
            if world_size != 1:
                raise RuntimeError(
                    f"world_size={world_size} but torch.distributed is not initialised"
                )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} outside world_size={world_size}")
        if num_classes < world_size:
            raise ValueError(f"num_classes={num_classes} < world_size={world_size}")
        self.margin = margin
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.rank, self.world_size, self.group = int(rank), int(world_size), group
        self.distributed = self.world_size > 1
        self.grad_scale = float(self.world_size) if backbone_grads_averaged else 1.0
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank,
                                                       self.world_size)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, self.embedding_dim),
                                                generator=generator))
        self.sampled_index: torch.Tensor | None = None  # local centres used by the last step

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.distributed:
            return embeddings, labels
        sizes = [torch.zeros(1, dtype=torch.long, device=labels.device)
                 for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([labels.numel()], device=labels.device),
                        group=self.group)
        counts = [int(s) for s in sizes]
        if len(set(counts)) != 1:
            raise ValueError(f"Partial FC needs the same batch size on every worker, got {counts}")
        all_embeddings = _GatherWithGrad.apply(
            embeddings, self.group, self.world_size, self.rank, self.grad_scale
        )
        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels.contiguous(), group=self.group)
        return all_embeddings, torch.cat(parts)

    def _sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres used this step (all positives + random negatives, in class order) and the
        labels re-indexed into them."""
        if self.sample_rate >= 1.0:
            return self.weight, local_labels
        with torch.no_grad():
            positive = torch.unique(local_labels[local_labels >= 0], sorted=True)
            if positive.numel() >= self.num_sample:
                index = positive
            else:
                priority = torch.rand(self.num_local, device=self.weight.device)
                priority[positive] = 2.0
                index = torch.topk(priority, k=self.num_sample)[1].sort()[0]
            remapped = local_labels.clone()
            rows = local_labels >= 0
            remapped[rows] = torch.searchsorted(index, local_labels[rows])
        self.sampled_index = index
        return self.weight[index], remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Global-batch mean loss of this worker's (embeddings, labels) and everyone else's."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must be N x {self.embedding_dim}, got {tuple(embeddings.shape)}"
            )
        labels = check_labels(labels.to(embeddings.device), embeddings.shape[0], self.num_classes)
        all_embeddings, all_labels = self._gather(embeddings.float(), labels)
        in_shard = (all_labels >= self.class_start) & (
            all_labels < self.class_start + self.num_local
        )
        local_labels = torch.where(in_shard, all_labels - self.class_start, -1)
        weight, local_labels = self._sample(local_labels)
        cosine = F.linear(F.normalize(all_embeddings, dim=1),
                          F.normalize(weight.float(), dim=1)).clamp(-1.0, 1.0)
        logits = self.margin(cosine, local_labels, all_embeddings.norm(dim=1))
        return _ShardedCrossEntropy.apply(logits, local_labels, self.group, self.distributed)

    def centers(self) -> torch.Tensor:
        """This worker's L2-normalised centres: classes class_start .. class_start+num_local-1."""
        return F.normalize(self.weight.detach().float(), dim=1)
