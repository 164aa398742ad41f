"""Ray Serve application: HTTP endpoints for face embeddings, verification and generation.

`cemiray.serve.app` holds the deployments, `build_app(cfg)` and `run(cfg)`; it imports Ray, so
this package re-exports only the light parts."""

from cemiray.serve.config import ScalingConfig, ServeConfig
from cemiray.serve.deploy_config import serve_config, write_serve_config

__all__ = ["ScalingConfig", "ServeConfig", "serve_config", "write_serve_config"]
