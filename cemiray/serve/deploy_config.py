"""The production Serve config (serve): what `serve deploy` and a KubeRay RayService read.

The production Serve config: the multi-application document `serve build` writes and
`serve deploy` / a KubeRay RayService (`serveConfigV2`) reads. Deployment options come from the
same `ServeConfig.deployment_options()` that `build_app` uses, so the file and the code agree."""

from __future__ import annotations

import yaml

from cemiray.data import storage
from cemiray.serve.config import ServeConfig

IMPORT_PATH = "cemiray.serve.app:app_builder"
CLUSTER_FIELDS = {"ray", "block", "host", "port", "app_name", "route_prefix"}
"""ServeConfig fields that describe where and how Serve runs, not the application: they go to
http_options and the application entry, not into the builder's args."""


def serve_config(cfg: ServeConfig) -> dict:
    """`{proxy_location, http_options, applications: [{name, route_prefix, import_path, args,
    deployments}]}` for this config."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "args": cfg.model_dump(mode="json", exclude=CLUSTER_FIELDS),
                "deployments": [
                    {"name": name, **options}
                    for name, options in cfg.deployment_options().items()
                ],
            }
        ],
    }


def write_serve_config(cfg: ServeConfig, url: str) -> str:
    """Write `serve_config(cfg)` as YAML to a storage URL (atomically); returns the URL."""
    text = yaml.safe_dump(serve_config(cfg), sort_keys=False, default_flow_style=False)
    storage.atomic_write_text(url, text)
    return url
