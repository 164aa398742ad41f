"""train-fr's Partial FC wiring without Ray: one worker with sample_rate 1 trains exactly like
the plain margin head, and the centre shards save, re-cut to another number of workers and
gather into the exported head (locally and across a real 2-process gloo group)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cemiray.models.partial_fc import PartialFC
from cemiray.train.fr import TrainFRConfig, fr_config, lr_lambda, make_optimizer
from cemiray.train.fr_model import CentreShard, build_face_model, recut

NUM_CLASSES, DIM = 11, 16
MODEL = {"backbone": "iresnet18", "input_size": 16, "embedding_dim": DIM, "width": 4,
         "head": "cosface", "num_classes": NUM_CLASSES, "scale": 16.0, "margin": 0.3}
CFG = TrainFRConfig(optimizer="sgd", lr=0.05, lr_milestones=[0.5], warmup_steps=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (several thrash on a small, shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, NUM_CLASSES, (6,), generator=g)


def test_one_worker_partial_fc_trains_like_the_plain_head() -> None:
    """The train loop's two optimizers (backbone; centre shard) against one over everything."""
    torch.manual_seed(0)
    plain = build_face_model(**MODEL)
    torch.manual_seed(0)
    sharded = build_face_model(**MODEL, partial_fc=True)
    assert isinstance(sharded.head, PartialFC) and not sharded.head.distributed
    assert torch.equal(plain.head.weight, sharded.head.weight)
    opt = make_optimizer(CFG, plain.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(CFG, 6))
    centres = CentreShard(sharded.head, make_optimizer(CFG, sharded.head.parameters()),
                          lr_lambda(CFG, 6))
    backbone_opt = make_optimizer(CFG, sharded.backbone.parameters())
    backbone_sched = torch.optim.lr_scheduler.LambdaLR(backbone_opt, lr_lambda(CFG, 6))
    losses = []
    for step in range(6):
        x, y = batch(step)
        loss = plain(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        sharded_loss = sharded(x, y)
        backbone_opt.zero_grad()
        sharded_loss.backward()
        backbone_opt.step()
        backbone_sched.step()
        centres.step()
        assert sharded_loss.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-5)
        losses.append(loss.item())
    assert losses[-1] != losses[0]
    for (name, a), b in zip(plain.named_parameters(), sharded.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    assert torch.allclose(centres.full_head().centers(), plain.head.centers(), rtol=1e-4,
                          atol=1e-5)


def trained_shard(seed: int = 0) -> CentreShard:
    torch.manual_seed(seed)
    head = build_face_model(**MODEL, partial_fc=True).head
    centres = CentreShard(head, make_optimizer(CFG, head.parameters()), lr_lambda(CFG, 10))
    for step in range(3):
        emb = torch.randn(6, DIM)
        head(emb, batch(step)[1]).backward()
        centres.step()
    return centres


def test_recut_concatenates_rows_and_keeps_the_rest() -> None:
    full = torch.arange(22.0).reshape(11, 2)
    states = [{"w": full[:6], "step": torch.tensor(3.0), "lr": [0.1]},
              {"w": full[6:], "step": torch.tensor(3.0), "lr": [0.1]}]
    got = recut(states, [6, 5], 4, 4)
    assert torch.equal(got["w"], full[4:8])
    assert got["step"].item() == 3.0 and got["lr"] == [0.1]


def test_shard_files_re_cut_onto_another_number_of_workers(tmp_path: Path) -> None:
    """A checkpoint of 2 shards (cut from one trained shard) loads into 1 worker whole:
    centres, SGD momentum and lr schedule."""
    source = trained_shard()
    state = source.state_dict()
    (tmp_path / "partial_fc").mkdir()
    for rank, (start, count) in enumerate(((0, 6), (6, 5))):
        part = recut([state], [NUM_CLASSES], start, count)
        part.update(class_start=start, num_local=count)
        torch.save(part, tmp_path / "partial_fc" / f"rank-{rank:05d}.pt")
    fresh = trained_shard(seed=1)
    assert not torch.equal(fresh.head.weight, source.head.weight)
    fresh.load(str(tmp_path))
    assert torch.equal(fresh.head.weight, source.head.weight)
    momentum = fresh.optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, state["optimizer"]["state"][0]["momentum_buffer"])
    assert fresh.scheduler.last_epoch == source.scheduler.last_epoch == 3
    # a saved shard round-trips through its own file
    source.save(str(tmp_path / "own"))
    assert [p.name for p in (tmp_path / "own" / "partial_fc").iterdir()] == ["rank-00000.pt"]
    (tmp_path / "partial_fc" / "rank-00001.pt").unlink()
    with pytest.raises(ValueError, match="do not cover the 11 classes"):
        fresh.load(str(tmp_path))
    with pytest.raises(ValueError, match="no Partial FC centres"):
        fresh.load(str(tmp_path / "nowhere"))


def gloo_worker(rank: int, rendezvous: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = build_face_model(**MODEL, partial_fc=True, seed=5)
        head = model.head
        centres = CentreShard(head, make_optimizer(CFG, head.parameters()), lr_lambda(CFG, 10))
        centres.save(out_dir)
        full = centres.full_head()
        dist.barrier()
        other_head = build_face_model(**MODEL, partial_fc=True, seed=9).head
        other = CentreShard(other_head, make_optimizer(CFG, other_head.parameters()),
                            lr_lambda(CFG, 10))
        other.load(out_dir)
        torch.save({"full": full.weight.detach(), "mine": head.weight.detach(),
                    "reloaded": other.head.weight.detach(), "start": head.class_start},
                   str(Path(out_dir) / f"result-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_workers_shard_save_and_gather(tmp_path: Path) -> None:
    mp.spawn(gloo_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)), nprocs=2,
             join=True)
    results = [torch.load(tmp_path / f"result-{r}.pt", weights_only=True) for r in range(2)]
    assert [r["start"] for r in results] == [0, 6]
    assert not torch.equal(results[0]["mine"][:5], results[1]["mine"]), "shards start alike"
    whole = torch.cat([results[0]["mine"], results[1]["mine"]])
    for r in results:
        assert torch.equal(r["full"], whole)
        assert torch.equal(r["reloaded"], r["mine"])
    single = trained_shard()  # the two files load into one worker as one head
    single.load(str(tmp_path))
    assert torch.equal(single.head.weight.detach(), whole)


def test_config_checks_and_the_shared_recipe() -> None:
    with pytest.raises(ValueError, match="partial_fc=true"):
        TrainFRConfig(sample_rate=0.5)
    assert TrainFRConfig(partial_fc=True, sample_rate=0.5).sample_rate == 0.5
    cfg = fr_config({"width": 8, "margin": 0.3, "epochs": 3}, out="o", data="toyfaces:?ids=0-1",
                    epochs=5)
    assert (cfg.width, cfg.margin, cfg.epochs, cfg.out) == (8, 0.3, 5, "o")
    with pytest.raises(ValueError, match="bogus"):
        fr_config({"bogus": 1}, out="o")
