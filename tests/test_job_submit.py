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
        stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            break
        if head.poll() is not None:
            pytest.fail(f"ray head exited: {(temp / 'head.log').read_text()[-2000:]}")
        time.sleep(2)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("ray head did not come up in 90 s")
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
            env=env, capture_output=True, text=True, timeout=120,
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
                               env=env, capture_output=True, text=True)
        status = (probe.stdout + probe.stderr).lower()
        if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id],
                          env=env, capture_output=True, text=True).stdout
    return status, logs


@pytest.mark.ray
def test_submitted_job_succeeds_and_writes_its_outputs(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "submitted"
    status, logs = submit(address, env, [
        "python", "jobs/quickstart.py", f"out={out}", "train_identities=6", "test_identities=4",
        "samples_per_identity=3", "verification_pairs=8", "shard_identities=3",
    ])
    assert "' succeeded" in status, f"{status}\n{logs[-3000:]}"
    assert "quickstart summary" in logs
    shards = sorted((out / "toyfaces_train" / "parquet").glob("shard-*.parquet"))
    assert [s.name for s in shards] == ["shard-00000000-00000003.parquet",
                                        "shard-00000003-00000006.parquet"]
    assert (out / "toyfaces_test" / "verification.bin").is_file()
