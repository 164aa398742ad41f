"""At one worker with ZeRO stage 0 the DeepSpeed engine steps exactly as a plain torch loop: the
gradient all-reduce (a flatten, an all-reduce of one rank, a copy back) is skipped, and the weights
after three steps, with and without gradient accumulation, equal the plain loop's bit for bit;
with `grad_clip` the engine clips as `clip_grad_norm_` does, and with `grad_clip=0` it does not
clip at all (DeepSpeed's own default would clip at 1.0). Its checkpoint (optimizer state inside
the model states file) passes the pickle check and loads.

DeepSpeed runs in a subprocess (one gloo process group of size 1 on CPU), so this test process
never holds a process group that other tests would see."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
import torch
import torch.distributed as dist
from cemiray.train import engine as eng
from cemiray.train.fr import TrainFRConfig, build_model, make_optimizer

dist.init_process_group("gloo", rank=0, world_size=1)
result = {}
for accum, clip in ((1, 0.0), (2, 0.0), (1, 1.0)):
    cfg = TrainFRConfig(input_size=32, width=4, embedding_dim=8, batch_size=4, grad_clip=clip,
                        distributed={"num_workers": 1, "zero_stage": 0, "grad_accum": accum})
    batches = [(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)),
                torch.tensor([i % 6, (i + 1) % 6, (i + 2) % 6, (i + 3) % 6]))
               for i in range(3 * accum)]
    torch.manual_seed(0)
    plain = build_model(cfg, num_classes=6)
    initial = {k: v.detach().clone() for k, v in plain.state_dict().items()}
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=6)
    engine, _, _ = eng.initialize(model, make_optimizer(cfg, model.parameters()),
                                  cfg.distributed, cfg.batch_size, grad_clip=clip)
    optimizer = make_optimizer(cfg, plain.parameters())
    for i, (x, y) in enumerate(batches):
        engine.backward(engine(x, y))
        engine.step()
        (plain(x, y) / accum).backward()
        if (i + 1) % accum == 0:
            if clip:
                torch.nn.utils.clip_grad_norm_(plain.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    mine, theirs = engine.module.state_dict(), plain.state_dict()
    result[f"accum{accum}_clip{clip}"] = {
        "allreduce": engine.enable_backward_allreduce, "clip": engine.gradient_clipping(),
        "close": all(torch.allclose(mine[k].float(), theirs[k].float(), rtol=1e-4, atol=1e-6)
                     for k in theirs),
        "moved": any(not torch.equal(v, initial[k])
                     for k, v in mine.items() if v.is_floating_point()),
        "equal": all(torch.equal(mine[k], theirs[k]) for k in theirs),
    }
    if accum == 1 and not clip:
        folder = sys.argv[1] + "/ckpt"
        engine.save_checkpoint(folder, tag=eng.CHECKPOINT_TAG, client_state={"step": 3})
        torch.manual_seed(1)
        other = build_model(cfg, num_classes=6)
        engine2, _, _ = eng.initialize(other, make_optimizer(cfg, other.parameters()),
                                       cfg.distributed, cfg.batch_size)
        state = eng.load_verified(engine2, folder, "resume_from")
        result["resumed_step"] = state["step"]
        result["resumed_equal"] = all(torch.equal(v, mine[k])
                                      for k, v in engine2.module.state_dict().items())
with open(sys.argv[1] + "/result.json", "w") as f:
    json.dump(result, f)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_worker_stage_0_steps_as_the_plain_loop_and_resumes(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], check=False, cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    for accum in ("accum1_clip0.0", "accum2_clip0.0"):
        assert result[accum] == {"allreduce": False, "clip": 0.0, "moved": True, "close": True,
                                 "equal": True}, result
    clipped = result["accum1_clip1.0"]
    assert clipped["clip"] == 1.0 and clipped["moved"] and clipped["close"], result
    assert result["resumed_step"] == 3 and result["resumed_equal"]
