"""Connecting a job to Ray (runtime): a local cluster, the submitting job's, or an address.

Connecting a job to Ray: an in-process local cluster by default, or the cluster a
`ray job submit` runs the job in (RAY_ADDRESS), or an explicit address. A local cluster started
here gets a watchdog (cemiray.runtime.reaper) that ends its processes once this process is gone,
even after a `kill -9`; a joined cluster is never touched."""

from __future__ import annotations

import logging
import os

from cemiray.runtime.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Start or join Ray once per process; a second call is a no-op."""
    import ray

    if ray.is_initialized():  # started by the caller: only the console settings apply
        set_progress_bars(cfg.progress_bars)
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        set_progress_bars(cfg.progress_bars)
        return
    # Ray turns token auth on for a new local cluster and warns about it on every run; the
    # choice is right and a user cannot act on the warning, so it is not shown.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
        include_dashboard=False,
        **kwargs,
    )
    if cfg.reap_on_exit:
        from cemiray.runtime.reaper import watch_local_cluster

        watch_local_cluster()  # the cluster ends with this process, even on kill -9
    set_progress_bars(cfg.progress_bars)


def set_progress_bars(enabled: bool) -> None:
    """Ray Data's progress bars (off by default: in a log they are blocks every few seconds, with
    drifting totals); CEMIRAY_PROGRESS=1 or =0 overrides the config. With them off, Ray Data's
    console shows warnings only (its INFO lines on every dataset's start and end, and the note
    that bars are off, stay in the session's ray-data.log)."""
    import ray

    override = os.environ.get("CEMIRAY_PROGRESS")
    enabled = enabled if override is None else override == "1"
    ray.data.DataContext.get_current().enable_progress_bars = enabled
    if not enabled:
        for handler in logging.getLogger("ray.data").handlers:
            if type(handler).__name__ == "PlainRayHandler":
                handler.setLevel(logging.WARNING)
                handler.addFilter(lambda record: not record.getMessage().startswith(
                    "Progress bars disabled"))
