"""Margin heads (hand-checked values) and Partial FC (equivalence to the full head, locally and
across a real 2-process gloo group)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cemiray.models.margin_heads import MarginSoftmaxHead, get_margin, get_margin_head
from cemiray.models.partial_fc import PartialFC, shard_range
from cemiray.models.serialization import load_model_folder, save_model_folder


def two_class_head(name: str, **kwargs: float):
    head = get_margin_head(name, num_classes=2, embedding_dim=2, **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # centres e1, e2 once normalised
    return head


def test_cosface_loss_by_hand() -> None:
    head = two_class_head("cosface", s=64.0, m=0.4)
    embeddings = torch.tensor([[3.0, 4.0]])  # unit vector (0.6, 0.8): cos = 0.6 and 0.8
    labels = torch.tensor([0])
    logits = head.logits(embeddings, labels)
    assert torch.allclose(logits, torch.tensor([[64 * (0.6 - 0.4), 64 * 0.8]]), atol=1e-4)
    expected = math.log(1 + math.exp(64 * 0.8 - 64 * 0.2))  # -log softmax of the target
    assert head(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)


def test_cosface_two_rows_mean() -> None:
    head = two_class_head("cosface", s=10.0, m=0.2)
    embeddings = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    labels = torch.tensor([1, 0])
    row0 = -math.log(math.exp(10 * 0.6) / (math.exp(10 * 0.6) + math.exp(10 * 0.6)))
    row1 = -math.log(math.exp(10 * 0.8) / (math.exp(10 * 0.8) + math.exp(0.0)))
    assert head(embeddings, labels).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_arcface_logit_by_hand() -> None:
    head = two_class_head("arcface", s=64.0, m=0.5)
    logits = head.logits(torch.tensor([[3.0, 4.0]]), torch.tensor([0]))
    expected_target = 64 * math.cos(math.acos(0.6) + 0.5)
    assert logits[0, 0].item() == pytest.approx(expected_target, rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(64 * 0.8, rel=1e-6)
    # theta + m beyond pi is held at pi: the target logit is -s, not rising again
    far = head.logits(torch.tensor([[-1.0, -0.01]]), torch.tensor([0]))
    assert far[0, 0].item() == pytest.approx(-64.0, rel=1e-4)


def test_adaface_by_hand_and_statistics() -> None:
    head = two_class_head("adaface", s=64.0, m=0.4, h=0.333, t_alpha=1.0)
    embeddings = torch.tensor([[3.0, 4.0], [0.0, 10.0]])  # norms 5 and 10
    labels = torch.tensor([0, 1])
    logits = head.logits(embeddings, labels)
    mean, std = 7.5, math.sqrt(((5 - 7.5) ** 2 + (10 - 7.5) ** 2) / 1)  # unbiased std
    assert head.margin.batch_mean.item() == pytest.approx(mean)
    assert head.margin.batch_std.item() == pytest.approx(std, rel=1e-6)
    for row, (norm, cosine) in enumerate([(5.0, 0.6), (10.0, 1 - 1e-3)]):
        z = max(-1.0, min(1.0, 0.333 * (norm - mean) / (std + 1e-3)))
        theta = min(max(math.acos(cosine) - 0.4 * z, 1e-3), math.pi - 1e-3)
        expected = 64 * (math.cos(theta) - (0.4 + 0.4 * z))
        assert logits[row, labels[row]].item() == pytest.approx(expected, rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(64 * 0.8, rel=1e-6)


def test_adaface_ema_only_in_training() -> None:
    head = get_margin_head("adaface", 5, 8)  # t_alpha 0.01 by default
    embeddings = torch.randn(6, 8) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    head(embeddings, labels)
    norms = embeddings.norm(dim=1)
    assert head.margin.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * norms.mean().item())
    assert head.margin.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * norms.std().item())
    before = head.margin.batch_mean.clone()
    head.eval()
    head(embeddings, labels)
    assert torch.equal(head.margin.batch_mean, before)
    head.train()
    with pytest.raises(ValueError, match=">= 2 embeddings"):
        head(embeddings[:1], labels[:1])


@pytest.mark.parametrize("name", ["arcface", "cosface", "adaface"])
def test_backward_and_centres(name: str) -> None:
    torch.manual_seed(0)
    head = get_margin_head(name, num_classes=7, embedding_dim=16)
    embeddings = torch.randn(5, 16, requires_grad=True)
    loss = head(embeddings, torch.tensor([0, 3, 6, 3, 1]))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    assert torch.isfinite(head.weight.grad).all()
    centres = head.centers()
    assert centres.shape == (7, 16)
    assert torch.allclose(centres.norm(dim=1), torch.ones(7), atol=1e-5)


def test_head_saves_and_reloads_as_folder(tmp_path) -> None:
    head = get_margin_head("adaface", 6, 4, m=0.35, t_alpha=0.5)
    head(torch.randn(3, 4), torch.tensor([0, 1, 5]))  # moves the norm statistics
    save_model_folder(head, str(tmp_path / "head"), head.config)
    state, config = load_model_folder(str(tmp_path / "head"))
    again = MarginSoftmaxHead.from_config(config)
    again.load_state_dict(state, strict=True)
    assert again.config == head.config and again.margin.m == 0.35
    assert torch.equal(again.centers(), head.centers())
    assert torch.equal(again.margin.batch_mean, head.margin.batch_mean)


def test_head_input_errors() -> None:
    head = get_margin_head("cosface", 4, 8)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        head(torch.randn(2, 8), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="2 labels for 3 embeddings"):
        head(torch.randn(3, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="N x 8"):
        head(torch.randn(2, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="arcface, cosface, adaface"):
        get_margin_head("sphereface", 4, 8)


# ---- Partial FC --------------------------------------------------------------------------

NUM_CLASSES, DIM, PER_RANK, WORLD = 11, 8, 3, 2
MARGINS = ["cosface", "arcface", "adaface"]


def shared_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(NUM_CLASSES, DIM, generator=generator)
    embeddings = torch.randn(WORLD * PER_RANK, DIM, generator=generator) * 4
    labels = torch.tensor([0, 10, 5, 6, 3, 10])  # classes on both shards, one repeated
    return weight, embeddings, labels


def full_head_reference(name: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    weight, embeddings, labels = shared_problem()
    head = get_margin_head(name, NUM_CLASSES, DIM)
    with torch.no_grad():
        head.weight.copy_(weight)
    embeddings.requires_grad_(True)
    loss = head(embeddings, labels)
    loss.backward()
    return loss.item(), embeddings.grad, head.weight.grad


def test_shard_ranges_cover_all_classes() -> None:
    ranges = [shard_range(11, r, 3) for r in range(3)]
    assert ranges == [(0, 4), (4, 4), (8, 3)]


@pytest.mark.parametrize("name", MARGINS)
def test_partial_fc_single_worker_equals_full_head(name: str) -> None:
    weight, embeddings, labels = shared_problem()
    pfc = PartialFC(get_margin(name), DIM, NUM_CLASSES, sample_rate=1.0)
    with torch.no_grad():
        pfc.weight.copy_(weight)
    embeddings.requires_grad_(True)
    loss = pfc(embeddings, labels)
    loss.backward()
    ref_loss, ref_embedding_grad, ref_weight_grad = full_head_reference(name)
    assert loss.item() == pytest.approx(ref_loss, abs=1e-5)
    assert torch.allclose(embeddings.grad, ref_embedding_grad, atol=1e-5)
    assert torch.allclose(pfc.weight.grad, ref_weight_grad, atol=1e-5)


def test_partial_fc_sampling_keeps_positives() -> None:
    torch.manual_seed(0)
    weight, embeddings, labels = shared_problem()
    pfc = PartialFC(get_margin("cosface"), DIM, NUM_CLASSES, sample_rate=0.7)
    with torch.no_grad():
        pfc.weight.copy_(weight)
    loss = pfc(embeddings, labels)
    index = pfc.sampled_index
    assert len(index) == pfc.num_sample == int(0.7 * NUM_CLASSES)
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index, index.sort()[0])
    # the same loss as a full head holding only the sampled centres
    sub_head = get_margin_head("cosface", len(index), DIM)
    with torch.no_grad():
        sub_head.weight.copy_(weight[index])
    sub_labels = torch.searchsorted(index, labels)
    assert loss.item() == pytest.approx(sub_head(embeddings, sub_labels).item(), abs=1e-5)
    few = PartialFC(get_margin("cosface"), DIM, NUM_CLASSES, sample_rate=0.1)
    few(embeddings, labels)  # fewer samples than positive classes: exactly the positives
    assert few.sampled_index.tolist() == sorted(set(labels.tolist()))


def test_partial_fc_needs_distributed_for_many_workers() -> None:
    with pytest.raises(RuntimeError, match="not initialised"):
        PartialFC(get_margin("cosface"), DIM, NUM_CLASSES, world_size=2, rank=0)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(get_margin("cosface"), DIM, NUM_CLASSES, sample_rate=0.0)


def distributed_worker(rank: int, rendezvous: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=WORLD)
    try:
        weight, embeddings, labels = shared_problem()
        results = {}
        for name in MARGINS:
            pfc = PartialFC(get_margin(name), DIM, NUM_CLASSES, sample_rate=1.0)
            with torch.no_grad():
                pfc.weight.copy_(weight[pfc.class_start : pfc.class_start + pfc.num_local])
            local = embeddings[rank * PER_RANK : (rank + 1) * PER_RANK].clone().requires_grad_(True)
            loss = pfc(local, labels[rank * PER_RANK : (rank + 1) * PER_RANK])
            loss.backward()
            results[name] = {
                "loss": loss.detach(),
                "embedding_grad": local.grad,
                "weight_grad": pfc.weight.grad,
                "class_start": pfc.class_start,
                "num_local": pfc.num_local,
            }
        torch.save(results, str(Path(out_dir) / f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_partial_fc_two_gloo_workers_match_full_head(tmp_path: Path) -> None:
    rendezvous = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(distributed_worker, args=(rendezvous, str(tmp_path)), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name in MARGINS:
        ref_loss, ref_embedding_grad, ref_weight_grad = full_head_reference(name)
        for rank, results in enumerate(per_rank):
            got = results[name]
            assert got["loss"].item() == pytest.approx(ref_loss, abs=1e-5), (name, rank)
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            # backbone_grads_averaged: each worker's gradient is world_size times its share
            assert torch.allclose(
                got["embedding_grad"] / WORLD, ref_embedding_grad[rows], atol=1e-5
            ), (name, rank)
            start, count = got["class_start"], got["num_local"]
            assert torch.allclose(
                got["weight_grad"], ref_weight_grad[start : start + count], atol=1e-5
            ), (name, rank)
    assert [r["cosface"]["num_local"] for r in per_rank] == [6, 5]


def test_softmax_gradient_matches_autograd_reference() -> None:
    """The hand-written backward of the sharded cross-entropy equals autograd's."""
    torch.manual_seed(1)
    pfc = PartialFC(get_margin("cosface", s=8.0), DIM, NUM_CLASSES)
    embeddings = torch.randn(5, DIM, requires_grad=True)
    labels = torch.tensor([1, 2, 3, 2, 9])
    pfc(embeddings, labels).backward()
    reference = embeddings.detach().clone().requires_grad_(True)
    cosine = F.linear(F.normalize(reference), F.normalize(pfc.weight.detach()))
    F.cross_entropy(pfc.margin(cosine, labels), labels).backward()
    assert torch.allclose(embeddings.grad, reference.grad, atol=1e-6)
