"""A job's own local Ray cluster goes away with its driver, even on `kill -9`.

End to end: a real `cemiray generate` (the shipped ToyFaces generator, a seed table far bigger
than the test waits for) starts its own local cluster in a subprocess; once its sampler is busy
the driver is SIGKILLed and, within 30 s, no process of that cluster may remain. Unit level: the
reaper's matching and its watchdog, on plain processes standing in for two Ray sessions, end
only the processes of their own session.

Every process a test starts is killed at its end by pid (never by name): other Ray clusters run
on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from helpers import wait_for

from cemiray.runtime import reaper

ROOT = Path(__file__).resolve().parents[1]
CEMIRAY = str(Path(sys.executable).parent / "cemiray")
ACCEPTANCE_S = 30


def _ident(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _alive(idents: set[tuple[int, float]]) -> list[tuple[int, str]]:
    """The processes of `idents` still running (a zombie is gone: it only waits to be reaped)."""
    out = []
    for pid, created in idents:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                out.append((pid, proc.name()))
        except psutil.Error:
            continue
    return sorted(out)


def _kill(idents: set[tuple[int, float]]) -> None:
    for pid, created in idents:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                proc.kill()
        except psutil.Error:
            continue


def _family(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _session_name(family: list[psutil.Process]) -> str | None:
    for proc in family:
        try:
            for arg in proc.cmdline():
                if arg.startswith("--session-name="):
                    return arg.split("=", 1)[1]
        except psutil.Error:
            continue
    return None


def _session_idents(session: str) -> set[tuple[int, float]]:
    """Every process on the machine whose command line names the session."""
    out = set()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        if proc.pid != os.getpid() and any(session in a for a in proc.info["cmdline"] or ()):
            out.add((proc.pid, proc.info["create_time"]))
    return out


def _busy_cluster(pid: int):
    """The driver's processes once its raylet, GCS and sampler actor (a Ray Data map worker of
    `SamplerActor`, by its process title) all run."""
    family = _family(pid)
    names, titles = set(), []
    for proc in family:
        try:
            names.add(proc.name())
            titles.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    sampling = any(t.startswith("ray::") and "SamplerActor" in t for t in titles)
    return family if {"raylet", "gcs_server"} <= names and sampling else None


def _generate_inputs(root: Path) -> list[str]:
    from cemiray.assets import TOYFACES_GENERATOR, TOYFACES_RECOGNIZER
    from cemiray.pipeline.seeds.table import random_identities, write_seed_table

    n = 64
    seeds = str(root / "seeds.parquet")
    write_seed_table(seeds, list(range(n)), random_identities(n, 512, seed=3))
    return [f"seeds={seeds}", f"generator={TOYFACES_GENERATOR}",
            f"recognizer={TOYFACES_RECOGNIZER}", f"out={root / 'out'}",
            "samples_per_identity=16", "identities_per_shard=8", "steps=50",
            "images_per_call=4", "distributed.num_workers=1", "ray.num_cpus=2",
            "ray.object_store_mb=200"]


@pytest.mark.timeout(420)
def test_generate_killed_with_sigkill_leaves_no_ray_process(tmp_path: Path) -> None:
    env = {**os.environ, "CEMIRAY_PROGRESS": "0", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "generate.log", "w")  # noqa: SIM115 - closed in finally
    driver = subprocess.Popen([CEMIRAY, "generate", *_generate_inputs(tmp_path)], cwd=ROOT,
                              env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    started: set[tuple[int, float]] = set()
    try:
        family = wait_for(lambda: driver.poll() is None and _busy_cluster(driver.pid), 300,
                          "the generate job's Ray cluster to run a sampler", poll=0.5)
        session = _session_name(family)
        assert session, "no --session-name= on any process of the job"
        family = _family(driver.pid)  # again: it grew while we looked
        started = {i for i in map(_ident, family) if i} | _session_idents(session)
        print(f"{session}: {len(started)} processes besides the driver:",
              sorted(name for _, name in _alive(started)))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
        end = time.monotonic() + ACCEPTANCE_S
        left = _alive(started | _session_idents(session))
        while left and time.monotonic() < end:
            time.sleep(0.5)
            left = _alive(started | _session_idents(session))
        print(f"{ACCEPTANCE_S} s after kill -9 of the driver, {len(left)} left: {left}")
        assert not left, f"{len(left)} processes of the job's Ray cluster outlived it: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        started |= {i for i in map(_ident, _family(driver.pid)) if i}
        _kill(started)
        log.close()


def _standin(tag: str, env: dict | None = None) -> subprocess.Popen:
    """A harmless sleeper whose command line carries `tag` (as a Ray process carries its session
    directory), optionally with extra environment variables."""
    code = "import sys, time; time.sleep(600)"
    return subprocess.Popen([sys.executable, "-c", code, tag], env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _fake_session(tmp_path: Path) -> reaper.Session:
    name = f"session_test_{uuid.uuid4().hex[:12]}"
    return reaper.Session(name=name, session_dir=str(tmp_path / name), node_id=uuid.uuid4().hex)


def test_matching_names_only_the_session_s_own_processes(tmp_path: Path) -> None:
    ours, other = _fake_session(tmp_path), _fake_session(tmp_path)
    procs = {
        "ours_cmdline": _standin(f"--session-dir={ours.session_dir}"),
        "ours_env": _standin("worker", {"RAY_NODE_ID": ours.node_id}),
        "other_cmdline": _standin(f"--session-dir={other.session_dir}"),
        "other_env": _standin("worker", {"RAY_NODE_ID": other.node_id}),
        "plain": subprocess.Popen(["sleep", "600"]),
    }
    try:
        for proc in procs.values():
            wait_for(lambda p=proc: psutil.Process(p.pid).cmdline(), 10, "the stand-ins")
        found = reaper.session_processes(ours)
        named = {name for name, proc in procs.items() if proc.pid in found}
        assert named == {"ours_cmdline", "ours_env"}, named
        assert os.getpid() not in found
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


@pytest.mark.parametrize("end", ["driver_killed", "session_shut_down"])
def test_watchdog_reaps_its_session_once_the_driver_or_session_ends(tmp_path: Path,
                                                                   end: str) -> None:
    """The watchdog as init_ray starts it, on stand-ins: a fake driver, a process Ray recorded
    for the session (its root), two more of the session (one named by its command line, one by
    its environment) and one of another session. Nothing is touched while driver and root live;
    once the driver is killed (or the root ends, as on ray.shutdown()), the session's processes
    end, the other session's and the driver stay, and the watchdog exits."""
    ours, other = _fake_session(tmp_path), _fake_session(tmp_path)
    driver = subprocess.Popen(["sleep", "600"])
    root = _standin(f"--session-name={ours.name}")
    member = _standin(f"--log-dir={ours.session_dir}/logs")
    child = _standin("worker", {"RAY_NODE_ID": ours.node_id})
    stranger = _standin(f"--session-dir={other.session_dir}")
    watchdog = None
    try:
        for proc in (root, member, child, stranger):
            wait_for(lambda p=proc: psutil.Process(p.pid).cmdline(), 10, "the stand-ins")
        watchdog = reaper.spawn_watchdog(ours, driver_pid=driver.pid,
                                         roots=[reaper.identity(root.pid)], grace_s=2.0)
        assert watchdog is not None
        time.sleep(1.5)
        assert watchdog.poll() is None, "the watchdog ended while driver and session live"
        assert all(p.poll() is None for p in (root, member, child)), "reaped too early"
        victim = driver if end == "driver_killed" else root
        victim.kill()
        victim.wait(10)
        assert watchdog.wait(ACCEPTANCE_S) == 0
        for proc in (root, member, child):
            proc.wait(10)  # raises TimeoutExpired if the watchdog left it running
        assert stranger.poll() is None, "the watchdog ended a process of another session"
        assert end == "driver_killed" or driver.poll() is None, "the watchdog ended the driver"
    finally:
        for proc in (driver, root, member, child, stranger, watchdog):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
