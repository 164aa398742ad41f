"""`ray job submit` against a real local head: the user's path to a cluster, checked end to end.

The head runs on loopback in its own temporary folder and process group with its own ports, and
only that process group is stopped afterwards (`ray stop` would end every Ray on the machine)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HEAD_START_S = 240  # a loaded 2-core machine has taken more than 90 s


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    temp = tmp_path_factory.mktemp("rayhead")
    gcs, dash = _free_port(), _free_port()
    # Every port of this head is its own, so it never collides with another Ray on the machine.
    own_ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", "--object-store-memory=300000000", f"--temp-dir={temp}",
         "--disable-usage-stats", *own_ports],
        env=env, cwd=temp, start_new_session=True,
        stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 (the head outlives this call)
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + HEAD_START_S
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                               env=env, capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            break
        if head.poll() is not None:
            pytest.fail(f"ray head exited: {(temp / 'head.log').read_text()[-2000:]}")
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail(f"ray head did not come up in {HEAD_START_S} s")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:  # whatever of the head's process group is left (gcs, monitor) ends with it
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def submit(address: str, env: dict, entrypoint: list[str], timeout: int = 400):
    """Submit, wait for the job to end, return (status line, logs)."""
    for _ in range(20):  # the head's job agent comes up a little after its dashboard
        sub = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
             "--no-wait", "--", *entrypoint],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        if sub.returncode == 0 or "No available agent" not in sub.stderr:
            break
        time.sleep(3)
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", sub.stdout + sub.stderr).group(0)
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id],
                               env=env, capture_output=True, text=True, check=False)
        status = (probe.stdout + probe.stderr).lower()
        if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id],
                          env=env, capture_output=True, text=True, check=False).stdout
    return status, logs


@pytest.mark.ray
@pytest.mark.slow
def test_submitted_generate_job_succeeds_and_writes_its_shards(ray_head, tmp_path):
    from test_generate import GEN_16, make_inputs

    from cemiray.data.parquet_shards import iter_rows

    address, env = ray_head
    inputs = make_inputs(tmp_path, 4, GEN_16)
    out = tmp_path / "generated"
    status, logs = submit(address, env, [
        "python", "jobs/generate.py", f"out={out}", f"seeds={inputs['seeds']}",
        f"generator={inputs['generator']}", f"recognizer={inputs['recognizer']}",
        "samples_per_identity=2", "identities_per_shard=2", "steps=2", "images_per_call=4",
        "distributed.num_workers=1",
    ])
    assert "' succeeded" in status, f"{status}\n{logs[-3000:]}"
    shards = sorted(p.name for p in (out / "parquet").glob("shard-*.parquet"))
    assert len(shards) == 2, shards
    rows = list(iter_rows(str(out / "parquet")))
    assert sorted((r["seed_id"], r["sample"]) for r in rows) == [
        (1000 + 3 * i, s) for i in range(4) for s in range(2)]
    assert (out / "manifest.json").is_file()
