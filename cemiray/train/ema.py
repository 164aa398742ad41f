"""The diffusion trainers' shared start (train part): an EMA of the weights and the engine.

train-gen and train-uncond both train with AdamW and a linear warm-up inside a DeepSpeed engine,
keep a float32 exponential moving average of the weights that travels in their checkpoints and
is what they export, and restore both after a failure or from `resume_from`."""

from __future__ import annotations

from cemiray.data import storage


class EmaWeights:
    """A float32 shadow of a module's parameters: decay min(ema_decay, (1+k)/(10+k)) at update k,
    so short runs are not dominated by the initial weights."""

    def __init__(self, module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    def update(self, module, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, p in module.named_parameters():
                self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict:
        return {n: t.detach().cpu().clone() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[0]}")
        for name, t in self.shadow.items():
            t.copy_(state[name].to(t.device, t.dtype))

    def copy_to(self, module) -> None:
        import torch

        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.shadow[name].to(p.device, p.dtype))


def start_ema_training(model, cfg, rank: int, lr_scales: dict[str, float] | None = None):
    """What the diffusion trainers (train-gen, train-uncond) share inside a worker: AdamW with a
    linear warm-up, the DeepSpeed engine, an EMA of the weights, the restored state (after a
    failure or from `cfg.resume_from`, EMA included) and the metrics log. `cfg` needs lr,
    weight_decay, warmup_steps, batch_size, grad_clip, ema_decay, resume_from, out and
    distributed. `lr_scales` {name part: factor}: parameters whose name holds the part learn at
    lr × factor. Returns (engine, lr scheduler, ema, state dict, log)."""
    import torch

    from cemiray.train import engine as eng

    ema = EmaWeights(model, cfg.ema_decay)
    by_factor: dict[float, list] = {}
    for name, p in model.named_parameters():
        factor = next((f for part, f in (lr_scales or {}).items() if part in name), 1.0)
        by_factor.setdefault(factor, []).append(p)
    groups = [{"params": ps, "lr": cfg.lr * f} for f, ps in by_factor.items()]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    engine, _, _ = eng.initialize(model, optimizer, cfg.distributed, cfg.batch_size, scheduler,
                                  grad_clip=cfg.grad_clip)
    state = eng.restore(engine, cfg.resume_from) or {}
    if "ema" in state:
        ema.load_state_dict(state["ema"])
    eng.record_worker(cfg.out, rank)
    log = eng.MetricsLog(storage.join(cfg.out, "metrics.jsonl"), enabled=rank == 0)
    return engine, scheduler, ema, state, log
