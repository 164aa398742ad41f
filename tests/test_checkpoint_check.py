"""`resume_from` (and Ray's own checkpoints) never run code from a pickle: a genuine DeepSpeed
checkpoint written here for real passes the check and loads; the same folder with a pickle whose
`__reduce__` is `os.system("touch MARKER")` (DeepSpeed's model states, a Partial FC shard, a .pkl
or a disguised file beside) is refused by name and MARKER never appears, also when the file is
swapped after the check and also from the `cemiray train-*` command line, before Ray starts.

DeepSpeed runs in a subprocess (one gloo process group of size 1 on CPU), so this test process
never holds a process group that other tests would see."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cemiray.models.serialization import CheckpointError, UnsafeCheckpointError
from cemiray.train.checkpoint_check import ALLOWED_GLOBALS, verify_checkpoint, verify_resume_from

ROOT = Path(__file__).resolve().parents[1]
MODEL_STATES = "state/mp_rank_00_model_states.pt"
OPTIM_STATES = "state/zero_pp_rank_0_mp_rank_00_optim_states.pt"
SHARD = "partial_fc/rank-00000.pt"


class Hostile:
    """Unpickled, it runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    """An inert object: refused all the same, as nothing cemiray saves is one."""


# Runs in a subprocess: a train-fr worker's real objects (IResNet backbone in a ZeRO-2 engine,
# Partial FC centre shard beside it) save a checkpoint, a fresh engine loads it through
# engine.load_verified, then hostile variants are loaded the same way. Prints nothing we need:
# the results go to <work>/result.json.
DEEPSPEED_SCRIPT = r'''
import json, os, shutil, sys
import torch
import torch.distributed as dist
from cemiray.train import engine as eng
from cemiray.train.fr import TrainFRConfig, build_model, lr_lambda, make_optimizer
from cemiray.train.fr_model import CentreShard

class Hostile:
    def __init__(self, marker):
        self.marker = marker
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

work = sys.argv[1]
marker = os.path.join(work, "MARKER")
dist.init_process_group("gloo", rank=0, world_size=1)
cfg = TrainFRConfig(input_size=32, width=4, embedding_dim=8, partial_fc=True, batch_size=4,
                    max_steps=4, distributed={"num_workers": 1, "zero_stage": 2})

def trainer(seed):
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=6)
    centres = CentreShard(model.head, make_optimizer(cfg, model.head.parameters()),
                          lr_lambda(cfg, 4))
    optimizer = make_optimizer(cfg, model.backbone.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, 4))
    engine, _, _ = eng.initialize(model.backbone, optimizer, cfg.distributed, cfg.batch_size,
                                  scheduler)
    return model, centres, engine

model, centres, engine = trainer(0)
x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
loss = model.head(engine(x), y)
engine.backward(loss)
engine.step()
centres.step()
genuine = os.path.join(work, "genuine")
engine.save_checkpoint(genuine, tag=eng.CHECKPOINT_TAG,
                       client_state={"step": 1, "ema": {"w": torch.arange(3.0)}})
centres.save(genuine)
saved = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
saved_centres = model.head.weight.detach().clone()

model2, centres2, engine2 = trainer(1)
before = {k: v.detach().clone() for k, v in engine2.module.state_dict().items()}
state = eng.load_verified(engine2, genuine, "resume_from", centres2.load)
result = {
    "step": state["step"], "ema": state["ema"]["w"].tolist(),
    "weights_differed": any(not torch.equal(saved[k], v) for k, v in before.items()),
    "weights_equal": all(torch.equal(saved[k], v)
                         for k, v in engine2.module.state_dict().items()),
    "centres_equal": torch.equal(saved_centres, model2.head.weight.detach()),
}
hostile_file = os.path.join(work, "hostile.pt")
torch.save({"module": Hostile(marker)}, hostile_file)

def attempt(name, swap=None, replace=None):
    folder = os.path.join(work, name)
    shutil.copytree(genuine, folder)
    if replace:
        shutil.copy(hostile_file, os.path.join(folder, replace))
    real_verify = eng.verify_checkpoint
    if swap:  # the file changes after the check passed, before DeepSpeed reads it
        def verify_then_swap(where, what):
            checked = real_verify(where, what)
            shutil.copy(hostile_file, os.path.join(where, swap))
            return checked
        eng.verify_checkpoint = verify_then_swap
    try:
        eng.load_verified(engine2, folder, "resume_from", centres2.load)
        result[name] = "loaded"
    except ValueError as exc:
        result[name] = f"{type(exc).__name__}: {exc}"
    finally:
        eng.verify_checkpoint = real_verify

attempt("hostile", replace="state/mp_rank_00_model_states.pt")
attempt("swapped_model", swap="state/mp_rank_00_model_states.pt")
attempt("swapped_optim", swap="state/zero_pp_rank_0_mp_rank_00_optim_states.pt")
result["marker"] = os.path.exists(marker)
with open(os.path.join(work, "result.json"), "w") as f:
    json.dump(result, f)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("deepspeed")
    script = work / "script.py"
    script.write_text(DEEPSPEED_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(work)], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return work / "genuine", json.loads((work / "result.json").read_text())


@pytest.fixture
def copy_of(deepspeed_run, tmp_path):
    """A fresh copy of the genuine checkpoint (and the MARKER path a hostile pickle touches)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(deepspeed_run[0], folder)
    return folder, tmp_path / "MARKER"


def test_a_genuine_checkpoint_passes_and_loads(deepspeed_run):
    genuine, result = deepspeed_run
    checked = verify_checkpoint(str(genuine), "resume_from")
    assert set(checked) == {MODEL_STATES, OPTIM_STATES, SHARD}
    # Those DeepSpeed globals are in it: without the allow-list weights_only would refuse it.
    with pytest.raises(pickle.UnpicklingError, match="deepspeed"):
        torch.load(genuine / OPTIM_STATES, weights_only=True)
    assert result["weights_differed"], "the fresh engine started from the saved weights"
    assert result["step"] == 1 and result["ema"] == [0.0, 1.0, 2.0]
    assert result["weights_equal"] and result["centres_equal"]


def test_the_hostile_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The control: what the other tests refuse does touch MARKER when unpickled."""
    marker = tmp_path / "MARKER"
    torch.save({"module": Hostile(marker)}, tmp_path / "hostile.pt")
    torch.load(tmp_path / "hostile.pt", weights_only=False)
    assert marker.exists()


def test_load_verified_refuses_hostile_model_states_before_deepspeed_reads_them(deepspeed_run):
    _, result = deepspeed_run
    assert result["hostile"].startswith("UnsafeCheckpointError: resume_from ")
    assert f"{MODEL_STATES} holds a pickle global 'posix.system'" in result["hostile"]
    assert not result["marker"]


@pytest.mark.parametrize("swapped", ["swapped_model", "swapped_optim"])
def test_a_file_swapped_after_the_check_is_refused_by_deepspeeds_load(deepspeed_run, swapped):
    _, result = deepspeed_run
    name = MODEL_STATES if swapped == "swapped_model" else OPTIM_STATES
    assert result[swapped].startswith("UnsafeCheckpointError: resume_from: ")
    assert name in result[swapped] and "'posix.system'" in result[swapped]
    assert not result["marker"]


def test_hostile_model_states_are_refused_by_name(copy_of):
    folder, marker = copy_of
    torch.save({"module": Hostile(marker), "global_steps": 1}, folder / MODEL_STATES)
    with pytest.raises(UnsafeCheckpointError) as caught:
        verify_checkpoint(str(folder), "resume_from")
    message = str(caught.value)
    assert message.startswith(f"resume_from {folder}: {MODEL_STATES} holds a pickle global "
                              "'posix.system'")
    assert "refusing to load it" in message and "\n" not in message
    assert not marker.exists()


def _torch_save(path, obj):
    torch.save(obj, path)


def _torch_save_legacy(path, obj):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _pickle(protocol):
    def write(path, obj):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return write


@pytest.mark.parametrize("name, write", [
    (SHARD, _torch_save),                       # a Partial FC shard
    ("partial_fc/rank-00001.pt", _torch_save),  # an extra shard
    ("extra.pkl", _pickle(pickle.HIGHEST_PROTOCOL)),
    ("extra.pkl", _pickle(0)),
    ("state/mp_rank_00_model_states.pt", _torch_save_legacy),
    ("notes.txt", _torch_save),                 # a torch archive under any name
    ("state/latest_tag", _pickle(2)),           # a bare pickle under any name
])
def test_a_hostile_file_beside_is_refused_by_name(copy_of, name, write):
    folder, marker = copy_of
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    write(folder / name, {"head": Hostile(marker)})
    with pytest.raises(UnsafeCheckpointError, match=f": {name} holds a pickle global "
                       "'posix.system'"):
        verify_checkpoint(str(folder), "resume_from")
    assert not marker.exists()


def test_other_code_and_other_shapes_are_refused(copy_of):
    folder, marker = copy_of
    (folder / "a.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="a.pt is not a torch checkpoint"):
        verify_checkpoint(str(folder))
    (folder / "a.pt").unlink()
    torch.save({"note": Plain()}, folder / "b.pt")  # no code, but no checkpoint holds one
    with pytest.raises(UnsafeCheckpointError, match=r"b.pt holds a pickle global '\S*Plain'"):
        verify_checkpoint(str(folder))
    (folder / "b.pt").unlink()
    os.mkfifo(folder / "pipe")
    with pytest.raises(CheckpointError, match="pipe is not a regular file"):
        verify_checkpoint(str(folder))
    assert not marker.exists()
    assert len(ALLOWED_GLOBALS) == 3


def test_a_missing_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=f"resume_from {tmp_path / 'nope'}: no such folder"):
        verify_checkpoint(str(tmp_path / "nope"), "resume_from")
    with pytest.raises(CheckpointError, match="no DeepSpeed checkpoint in it"):
        verify_checkpoint(str(tmp_path), "resume_from")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"path": "/runs/x/checkpoint_1"}))
    with pytest.raises(CheckpointError, match="checkpoint.json names /runs/x/checkpoint_1"):
        verify_checkpoint(str(tmp_path), "resume_from")
    with pytest.raises(CheckpointError, match="not a folder"):
        verify_checkpoint(str(tmp_path / "checkpoint.json"), "resume_from")


def test_resume_from_checks_local_paths_and_leaves_remote_ones_to_the_workers(copy_of):
    folder, marker = copy_of
    verify_resume_from(None)
    verify_resume_from(str(folder))
    torch.save({"module": Hostile(marker)}, folder / MODEL_STATES)
    for url in (str(folder), f"file://{folder}"):
        with pytest.raises(UnsafeCheckpointError, match=f"resume_from {folder}: {MODEL_STATES}"):
            verify_resume_from(url)
    verify_resume_from("s3://bucket/run/checkpoint_000001")  # checked after download
    assert not marker.exists()


@pytest.mark.parametrize("job, args", [
    ("train-fr", []),
    ("train-gen", ["recognizer=/nonexistent/recognizer"]),
    ("train-uncond", []),
])
def test_the_command_line_refuses_a_hostile_resume_from_before_ray_starts(copy_of, job, args):
    """`data` is unusable on purpose: were the check missing or after the data is read, the job
    would stop at the data (a message without resume_from) instead of starting Ray."""
    folder, marker = copy_of
    torch.save({"module": Hostile(marker)}, folder / MODEL_STATES)
    out = folder.parent / "out"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("cemiray")), job, f"resume_from={folder}",
         f"out={out}", "data=nosuchkind:x", *args],
        check=False, cwd=folder.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"resume_from {folder}: {MODEL_STATES} holds a pickle global 'posix.system'" in last, \
        proc.stderr[-3000:]
    assert not marker.exists()
    assert not out.exists(), "the job got as far as creating its out folder"
