"""The serve part: a Ray Serve app with HTTP endpoints to embed, verify and generate faces.

`guard` (API key, body size), `parsing` (request checks), `deployments` (the models), `ingress`
(the routes) and `app` (`build_app(cfg)`, `app_builder`, `run(cfg)`) import Ray, so this package
re-exports only the light parts."""

from cemiray.serve.config import ScalingConfig, ServeConfig
from cemiray.serve.deploy_config import serve_config, write_serve_config

__all__ = ["ScalingConfig", "ServeConfig", "serve_config", "write_serve_config"]
