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

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": cfg.log_to_driver, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        return
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_mb * 2**20 if cfg.object_store_mb else None,
        include_dashboard=False,
        **kwargs,
    )
    if cfg.reap_on_exit:
        from cemiray.runtime.reaper import watch_local_cluster

        watch_local_cluster()  # the cluster ends with this process, even on kill -9
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("CEMIRAY_PROGRESS", "1") == "1"
