"""Checking a checkpoint before it is loaded (train): no pickle in it may name code.

A training checkpoint (`resume_from`, or the one Ray Train hands back after a worker failure)
is a folder of `torch.save` pickles: DeepSpeed's `state/*_model_states.pt` and
`state/*_optim_states.pt`, and what the trainers save beside the engine (train-fr's Partial FC
shards `partial_fc/rank-<r>.pt`). DeepSpeed reads its files with `torch.load(weights_only=False)`,
so a pickle that names, say, `os.system` would run it. Before anything is loaded:

* `verify_checkpoint(folder)` refuses a folder that is missing or holds no DeepSpeed checkpoint
  (`state/` with a `*model_states.pt`), then opens every pickle-bearing file of the tree (by
  suffix: .pt .pth .bin .pkl .pickle .ckpt .tar .zip; and by content: any zip archive or
  protocol-2+ pickle, whatever its name) with `torch.load(weights_only=True, map_location="cpu")`
  (memory-mapped for zip archives, so tensors are not read). The only globals admitted beyond
  torch's own weights-only set are `ALLOWED_GLOBALS`, the three DeepSpeed types its ZeRO
  optimizer states hold; during this check they are bound to an inert stand-in, so no DeepSpeed
  code runs either. Any other global, or a file that is not a weights-only torch pickle, raises
  `UnsafeCheckpointError` / `CheckpointError` (ValueErrors) naming the folder, the file and the
  global; nothing from the file was run. Other files (`latest`, DeepSpeed's `zero_to_fp32.py`,
  JSON) are data nothing unpickles and are left alone.
* `restricted_loads(engine)` makes DeepSpeed's own loads (its checkpoint engine's `load`, used
  for the model and every ZeRO optimizer file) weights-only with the real allowed classes, for
  the duration of `engine.load_checkpoint`.

Time of check and time of use: a file swapped after `verify_checkpoint` read it and before
DeepSpeed reads it again is still opened weights-only by `restricted_loads`, so a swap makes the
load fail, it never runs code. The check alone does not cover that gap; both are used together
(cemiray.train.engine.load_verified). Partial FC shards are read by cemiray itself with
`weights_only=True` (cemiray.train.fr_model.CentreShard.load).

Remote checkpoints (`s3://…`, `gs://…`): the driver's early check (`verify_resume_from`, before
Ray starts) handles local paths and `file://` URLs only; a remote `resume_from` is checked by
every worker after Ray has downloaded it, in `engine.restore`, before DeepSpeed loads it.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from cemiray.models.serialization import CheckpointError, UnsafeCheckpointError

CHECKPOINT_TAG = "state"

# Globals a checkpoint written by cemiray holds beyond torch's weights-only defaults (found by
# saving ZeRO 0-3, fp32/bf16, SGD/AdamW engines with DeepSpeed 0.19.8 and scanning every
# checkpoint under runs/). Each is plain data: a dataclass of two ints, an int enum, and a loss
# scaler object whose __init__ stores a number (no __setstate__, no __reduce__ of its own).
ALLOWED_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",    # ZeRO optim states: 'loss_scaler'
    "deepspeed.runtime.zero.config.ZeroStageEnum",      # ZeRO optim states: 'zero_stage'
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO 1/2: 'param_slice_mappings'
)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".tar", ".zip")
_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL_IN_ERROR = re.compile(r"GLOBAL ([\w.]+)")


class _StandIn:
    """What an allowed DeepSpeed global becomes while a file is only being checked: takes any
    arguments and state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass


def verify_resume_from(url: str | None) -> None:
    """The driver's early check of a job's `resume_from` (before Ray starts): a local path or
    `file://` URL is verified here; a remote URL is left to the workers (see the module doc)."""
    if not url:
        return
    url = str(url)
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif "://" in url:
        return
    verify_checkpoint(os.path.abspath(os.path.expanduser(url)), "resume_from")


def verify_checkpoint(folder: str, what: str = "checkpoint") -> list[str]:
    """Refuse `folder` unless it is a DeepSpeed checkpoint whose every pickle loads weights-only
    with `ALLOWED_GLOBALS`; return the checked files (relative paths). `what` starts every
    message ("resume_from", "checkpoint")."""
    root = Path(folder)
    where = f"{what} {folder}"
    if not root.exists():
        raise CheckpointError(f"{where}: no such folder")
    if not root.is_dir():
        raise CheckpointError(f"{where}: not a folder (give the checkpoint folder named in a "
                              "run's out/checkpoint.json)")
    tag = root / CHECKPOINT_TAG
    if not (tag.is_dir() and any(tag.glob("*model_states.pt"))):
        raise CheckpointError(f"{where}: no DeepSpeed checkpoint in it (expected "
                              f"{CHECKPOINT_TAG}/*model_states.pt){_hint(root)}")
    checked = []
    for path in _files(root, where):
        rel = path.relative_to(root).as_posix()
        if _bears_pickle(path):
            check_file(path, f"{where}: {rel}")
            checked.append(rel)
    return checked


def check_file(path: Path, label: str) -> None:
    """Open one file weights-only (allowed DeepSpeed globals as inert stand-ins) and drop it."""
    try:
        with path.open("rb") as f:
            zipped = f.read(4) == _ZIP_MAGIC
        with torch.serialization.safe_globals(_stand_ins()):
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        raise _refusal(exc, label, path) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read is a refusal
        text = str(exc).strip()
        reason = type(exc).__name__ + (f": {text.splitlines()[0]}" if text else "")
        raise CheckpointError(f"{label} is not a torch checkpoint that loads with "
                              f"weights_only=True ({reason}); refusing to load it") from None
    del loaded


def safe_load(path, map_location=None, label: str | None = None):
    """`torch.load` of a checkpoint file, weights-only with the real `ALLOWED_GLOBALS`."""
    with torch.serialization.safe_globals(_real_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _refusal(exc, label or f"checkpoint file {path}", Path(path)) from None


@contextmanager
def restricted_loads(engine, what: str = "checkpoint") -> Iterator[None]:
    """For the duration, `engine.checkpoint_engine.load` (every file DeepSpeed's
    `load_checkpoint` reads) is `safe_load`. An engine without one is left as it is."""
    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    if ckpt_engine is None or not callable(getattr(ckpt_engine, "load", None)):
        yield
        return
    own = vars(ckpt_engine).get("load")

    def load(path, map_location=None):
        return safe_load(path, map_location, f"{what}: {path}")

    ckpt_engine.load = load
    try:
        yield
    finally:
        if own is None:
            del ckpt_engine.load
        else:
            ckpt_engine.load = own


def _files(root: Path, where: str) -> Iterator[Path]:
    """Every file under `root`, through symbolic links (each real folder once)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not path.is_file():
                rel = path.relative_to(root).as_posix()
                raise CheckpointError(f"{where}: {rel} is not a regular file (a checkpoint "
                                      "holds only files and folders); refusing to load it")
            yield path


def _bears_pickle(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as f:
        head = f.read(4)
    return head == _ZIP_MAGIC or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _refusal(exc: pickle.UnpicklingError, label: str, path: Path) -> CheckpointError:
    named = _GLOBAL_IN_ERROR.findall(str(exc)) or _pickle_globals(path)
    refused = [g for g in named if g not in ALLOWED_GLOBALS]
    if refused:
        return UnsafeCheckpointError(
            f"{label} holds a pickle global '{refused[0]}' that a checkpoint written by cemiray "
            "never contains; refusing to load it (nothing from it was run)")
    reason = next((ln.strip() for ln in str(exc).splitlines() if any(
        word in ln.lower() for word in ("unsupported", "can only", "trying to"))), "")
    return CheckpointError(
        f"{label} is not a torch checkpoint that loads with weights_only=True "
        f"({reason or type(exc).__name__}); refusing to load it (nothing from it was run)")


def _pickle_globals(path: Path) -> list[str]:
    """The globals the first pickle in `path` names, read opcode by opcode (nothing is
    unpickled); best effort, for the refusal message only."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict = {}
    last = None
    try:
        with path.open("rb") as f:
            for op, arg, _ in pickletools.genops(f):
                name = op.name
                if name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str) and ("UNICODE" in name or "STRING" in name):
                    last = arg
                    strings.append(arg)
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = last
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    last = memo.get(arg)
                    if isinstance(last, str):
                        strings.append(last)
                elif name != "FRAME":
                    last = None
    except Exception:  # noqa: BLE001 - a malformed pickle names what it named so far
        return found
    return found


def _hint(root: Path) -> str:
    """A run's out folder names its last checkpoint in checkpoint.json: say so."""
    try:
        named = json.loads((root / "checkpoint.json").read_text())["path"]
    except Exception:  # noqa: BLE001 - no usable checkpoint.json: no hint
        return ""
    return f"; this looks like a run's out folder, whose checkpoint.json names {named}"


def _stand_ins() -> list:
    return [(_StandIn, name) for name in ALLOWED_GLOBALS]


def _real_globals() -> list:
    import importlib

    out = []
    for name in ALLOWED_GLOBALS:
        module, _, attr = name.rpartition(".")
        out.append((getattr(importlib.import_module(module), attr), name))
    return out
