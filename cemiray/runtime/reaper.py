"""Reaping a job's own local Ray cluster when its driver dies (runtime): a detached watchdog.

A job that starts an in-process local Ray cluster (`init_ray` without an address) owns the
cluster's processes. Ray ties its GCS server and raylet to the driver (PR_SET_PDEATHSIG), but what
the raylet starts (dashboard and runtime-env agents, idle and busy workers) was measured alive long
after a `kill -9` of the driver. `init_ray` therefore starts this module as a small watchdog in
its own session (`python -m cemiray.runtime.reaper ...`): it polls the driver's pid every 0.5 s
and, once the driver is gone (or the session has been shut down normally), ends every process of
that Ray session, SIGTERM first and SIGKILL after a grace of a few seconds, then exits.

A process belongs to the session when any of these holds:
  - its command line names the session (`session_...`, in `--session-name=` and in every path under
    the session directory): GCS server, raylet, monitor, dashboard, log monitor, fresh workers;
  - its environment says it was started for this node (`RAY_NODE_ID`): the raylet's agents;
  - its environment names this session's raylet (`RAY_RAYLET_PID`) and it holds a file open under
    the session directory: workers, whose titles (`ray::IDLE`) no longer carry their arguments;
  - it is one of the processes Ray recorded for the node, or a descendant the watchdog saw of
    them while the driver lived (by pid and start time, so a reused pid is never taken for it);
  - it descends from one of the above.
Processes of any other Ray session match none of these; the watchdog never ends itself or an
ancestor of its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the watchdog looks at the driver
TRACK_S = 2.0  # how often it records the descendants of the session's processes
GRACE_S = 5.0  # SIGTERM → SIGKILL
SAME_START_S = 0.05  # start times read by two processes agree to this much
LOG_NAME = "cemiray_reaper.log"

Ident = tuple[int, float]  # (pid, start time): a process, robust to pid reuse

_WATCHDOGS: list[subprocess.Popen] = []  # kept so that they are never garbage-collected


@dataclass(frozen=True)
class Session:
    """What names one Ray session's processes (see the module docstring)."""

    name: str
    session_dir: str
    node_id: str
    raylet_pid: int | None = None


def identity(pid: int) -> Ident | None:
    """(pid, start time) of a running process, or None."""
    try:
        return pid, psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def running(ident: Ident) -> psutil.Process | None:
    """The process `ident` names if it still runs (a zombie has ended: it waits to be reaped)."""
    pid, created = ident
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > SAME_START_S:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def _protected() -> set[int]:
    """This process and its ancestors (a live driver among them): never ended here."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def _holds_file_under(proc: psutil.Process, folder: str) -> bool:
    prefix = folder.rstrip("/") + "/"
    try:
        return any(f.path.startswith(prefix) for f in proc.open_files())
    except psutil.Error:
        return False


def _belongs(session: Session, info: dict, proc: psutil.Process) -> bool:
    if any(session.name in arg for arg in info.get("cmdline") or ()):
        return True
    env = info.get("environ") or {}
    if env.get("RAY_NODE_ID") == session.node_id:
        return True
    return (session.raylet_pid is not None
            and env.get("RAY_RAYLET_PID") == str(session.raylet_pid)
            and _holds_file_under(proc, session.session_dir))


def session_processes(session: Session, known: Iterable[Ident] = ()) -> dict[int, psutil.Process]:
    """Every running process of `session`: those matching it, the `known` ones still running
    and the descendants of all of them; never this process or its ancestors."""
    protected = _protected()
    table: dict[int, psutil.Process] = {}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["ppid", "status", "cmdline", "environ"]):
        info = proc.info
        if proc.pid in protected or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        table[proc.pid] = proc
        if _belongs(session, info, proc):
            found[proc.pid] = proc
    for ident in known:
        proc = running(ident)
        if proc is not None and proc.pid not in protected:
            found[proc.pid] = proc
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.info.get("ppid") or 0, []).append(pid)
    todo = list(found)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = table[pid]
                todo.append(pid)
    return found


def _still_running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the pid still names the same process
        except psutil.Error:
            continue


def terminate(procs: Iterable[psutil.Process], grace_s: float = GRACE_S) -> list[psutil.Process]:
    """SIGTERM `procs`, SIGKILL those still running after `grace_s`; returns those that ran."""
    procs = _still_running(procs)
    _signal_all(procs, signal.SIGTERM)
    end = time.monotonic() + grace_s
    left = _still_running(procs)
    while left and time.monotonic() < end:
        time.sleep(0.1)
        left = _still_running(left)
    _signal_all(left, signal.SIGKILL)
    end = time.monotonic() + 2.0  # a killed process takes a moment to be gone
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = _still_running(left)
    return procs


def reap(session: Session, known: Iterable[Ident] = (), grace_s: float = GRACE_S) -> int:
    """End every process of `session`; returns how many there were. A second look catches what
    started while the first ones were ending."""
    known = list(known)
    ended: set[int] = set()
    for grace in (grace_s, 1.0):
        procs = session_processes(session, known)
        if not procs:
            break
        for proc in procs.values():
            try:
                log.info("ending %d %s", proc.pid, " ".join(proc.cmdline())[:160])
            except psutil.Error:
                continue
        ended.update(p.pid for p in terminate(procs.values(), grace))
    return len(ended)


def _track(roots: list[Ident], seen: dict[int, float]) -> dict[int, float]:
    """The still-running descendants of the running `roots`, with those seen before."""
    table = {p.pid: p for p in psutil.process_iter(["ppid", "create_time"])}
    alive = {pid: t for pid, t in seen.items()
             if pid in table and abs(table[pid].info["create_time"] - t) <= SAME_START_S}
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.info["ppid"] or 0, []).append(pid)
    todo = [r[0] for r in roots if running(r) is not None]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in alive:
                alive[pid] = table[pid].info["create_time"]
                todo.append(pid)
    return alive


def watch(session: Session, driver: Ident, roots: list[Ident], poll_s: float = POLL_S,
          grace_s: float = GRACE_S) -> int:
    """Wait for the driver to end (or for every root to end: the session was shut down), then
    reap the session. Returns how many processes were ended."""
    seen: dict[int, float] = {}
    tracked_at = -TRACK_S
    while True:
        if running(driver) is None:
            why = f"driver {driver[0]} is gone"
            break
        if roots and all(running(r) is None for r in roots):
            why = "the session was shut down"
            break
        if time.monotonic() - tracked_at >= TRACK_S:
            seen = _track(roots, seen)
            tracked_at = time.monotonic()
        time.sleep(poll_s)
    count = reap(session, [*roots, *seen.items()], grace_s)
    log.info("%s: ended %d process(es) of %s", why, count, session.name)
    return count


def local_session() -> tuple[Session, list[Ident]] | None:
    """The Ray session this process started and the processes Ray recorded for it, or None when
    it started none (it joined a running cluster)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", None) or {}
    roots = [identity(info.process.pid) for infos in processes.values() for info in infos]
    roots = [r for r in roots if r is not None]
    if node is None or not roots:
        return None
    raylets = processes.get(ray._private.ray_constants.PROCESS_TYPE_RAYLET) or []
    session = Session(name=node.session_name, session_dir=node.get_session_dir_path(),
                      node_id=node.node_id,
                      raylet_pid=raylets[0].process.pid if raylets else None)
    return session, roots


def spawn_watchdog(session: Session, driver_pid: int | None = None, roots: Iterable[Ident] = (),
                   poll_s: float = POLL_S, grace_s: float = GRACE_S) -> subprocess.Popen | None:
    """Start the watchdog of `session` for the driver `driver_pid` (this process by default),
    detached into its own session; its log goes to the session's logs folder."""
    driver = identity(os.getpid() if driver_pid is None else driver_pid)
    if driver is None:
        return None
    cmd = [sys.executable, "-m", "cemiray.runtime.reaper", "--driver", _fmt(driver),
           "--session-name", session.name, "--session-dir", session.session_dir,
           "--node-id", session.node_id, "--poll", str(poll_s), "--grace", str(grace_s)]
    if session.raylet_pid is not None:
        cmd += ["--raylet-pid", str(session.raylet_pid)]
    for root in roots:
        cmd += ["--root", _fmt(root)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    logs = Path(session.session_dir) / "logs"
    stderr = open(logs / LOG_NAME, "ab") if logs.is_dir() else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, env=env, start_new_session=True, close_fds=True)
    finally:
        if stderr is not subprocess.DEVNULL:
            stderr.close()


def watch_local_cluster() -> subprocess.Popen | None:
    """Called by init_ray after it started a local cluster: start its watchdog. A failure is
    logged, never raised (the job runs on without it)."""
    for old in list(_WATCHDOGS):
        if old.poll() is not None:
            _WATCHDOGS.remove(old)
    try:
        found = local_session()
        if found is None:
            return None
        watchdog = spawn_watchdog(found[0], roots=found[1])
    except Exception as exc:  # noqa: BLE001 - never fail a job for its safety net
        log.warning("could not start the Ray session's reaper: %s", exc)
        return None
    if watchdog is not None:
        _WATCHDOGS.append(watchdog)
    return watchdog


def _fmt(ident: Ident) -> str:
    return f"{ident[0]}:{ident[1]!r}"


def _ident_arg(text: str) -> Ident:
    pid, _, created = text.partition(":")
    return int(pid), float(created)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cemiray.runtime.reaper", description=__doc__)
    p.add_argument("--driver", type=_ident_arg, required=True, help="PID:START of the driver")
    p.add_argument("--session-name", required=True)
    p.add_argument("--session-dir", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--raylet-pid", type=int)
    p.add_argument("--root", type=_ident_arg, action="append", default=[],
                   help="PID:START of a process Ray recorded for the node (repeatable)")
    p.add_argument("--poll", type=float, default=POLL_S)
    p.add_argument("--grace", type=float, default=GRACE_S)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s reaper %(process)d: %(message)s")
    session = Session(args.session_name, args.session_dir, args.node_id, args.raylet_pid)
    log.info("watching driver %d for %s", args.driver[0], session.name)
    watch(session, args.driver, args.root, args.poll, args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
