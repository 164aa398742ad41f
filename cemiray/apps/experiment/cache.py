"""The experiment's stage cache (apps): content-addressed stage results.

A stage reruns only when what it depends on changed. A stage's key is the SHA-256 of its name,
its config (canonical JSON) and the content hashes of the input files it names (models, data
tables), each the one model hash of the project (cemiray.models.hashing.model_hash), so a model
is named here as in `/v1/models` and in the rows it generates. Each stage writes into its own folder
`root/<name>-<key16>/`; `stage.json` is written last, atomically, so a folder without it is an
unfinished attempt that a rerun starts again from scratch. Downstream stages name upstream
outputs by these folders, so a changed upstream key changes every key after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cemiray.data import storage
from cemiray.models.hashing import model_hash

STAGE_FILE = "stage.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class StageResult:
    name: str
    key: str
    out: str
    result: dict
    cached: bool
    seconds: float
    config: dict


class StageCache:
    """Runs stages under `root`, each at most once per distinct (config, inputs)."""

    def __init__(self, root: str, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.log = log
        self.records: list[StageResult] = []

    def key(self, name: str, config: dict, inputs: dict[str, str]) -> str:
        prints = {k: model_hash(v) for k, v in sorted(inputs.items())}
        payload = canonical_json({"stage": name, "config": config, "inputs": prints})
        return hashlib.sha256(payload.encode()).hexdigest()

    def run(self, name: str, config: dict, fn: Callable[[str], dict],
            inputs: dict[str, str] | None = None) -> StageResult:
        """`fn(out)` does the work into folder `out` and returns a JSON-ready summary."""
        key = self.key(name, config, inputs or {})
        out = storage.join(self.root, f"{name}-{key[:16]}")
        marker = storage.join(out, STAGE_FILE)
        if storage.exists(marker):
            record = json.loads(storage.read_text(marker))
            done = StageResult(name, key, out, record["result"], True, record["seconds"],
                               record["config"])
            self.log(f"[{name}] cached ({key[:12]}) → {out}")
        else:
            if storage.exists(out):
                self._discard(out)
            storage.makedirs(out)
            self.log(f"[{name}] running ({key[:12]}) → {out}")
            t0 = time.perf_counter()
            result = fn(out)
            seconds = round(time.perf_counter() - t0, 1)
            record = {"stage": name, "key": key, "config": config, "inputs": inputs or {},
                      "result": result, "seconds": seconds,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            storage.atomic_write_text(marker, json.dumps(record, indent=2, default=str) + "\n")
            done = StageResult(name, key, out, result, False, seconds, config)
            self.log(f"[{name}] done in {seconds} s")
        self.records.append(done)
        return done

    @staticmethod
    def _discard(out: str) -> None:
        """An unfinished attempt: remove it so nothing half-written is mistaken for output."""
        storage.remove(out, recursive=True)
