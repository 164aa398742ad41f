"""Building and running the serve app (serve): `build_app`, `app_builder` and `run`.

The ingress bound to the recogniser and generator deployments; `app_builder` is the import path
of Serve config files (`cemiray.serve.app:app_builder`, also named in cluster manifests) and
`run` starts `cemiray serve`.

    HTTP → Ingress (cemiray.serve.ingress: guard, parsing, limits)
             ├─ Recognizer.embed   one image per call, batched while busy (serve/batching.py)
             └─ Generator.generate one image per call, batched while busy (serve/batching.py)
"""

import json
import time

from ray import serve

from cemiray.serve.config import GENERATOR, INGRESS, RECOGNIZER, ServeConfig
from cemiray.serve.deployments import GeneratorModel, RecognizerModel
from cemiray.serve.ingress import CemirayAPI

__all__ = ["ServeConfig", "app_builder", "build_app", "run"]


def build_app(cfg: ServeConfig) -> serve.Application:
    """The bound application: ingress → recogniser (and generator when configured). The API
    key's digest is resolved here (from `api_key_sha256_env` where set)."""
    cfg = cfg.model_copy(update={"api_key_sha256": cfg.key_digest(), "api_key_sha256_env": None})
    options = cfg.deployment_options()
    recognizer = RecognizerModel.options(**options[RECOGNIZER]).bind(cfg)
    generator = (GeneratorModel.options(**options[GENERATOR]).bind(cfg)
                 if cfg.generator else None)
    return CemirayAPI.options(**options[INGRESS]).bind(cfg, recognizer, generator)


def app_builder(args: dict) -> serve.Application:
    """The import path of a Serve config file (`cemiray.serve.app:app_builder`): args are
    ServeConfig fields."""
    return build_app(ServeConfig(**args))


def run(cfg: ServeConfig) -> str:
    """Start Serve on cfg.host:cfg.port with this application; block until interrupted (then
    delete the application) unless cfg.block is False. Returns the base URL."""
    from cemiray.runtime.cluster import init_ray

    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    started = time.perf_counter()
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(json.dumps({"serving": url, "openapi": f"{url}/openapi.json",
                      "startup_s": round(time.perf_counter() - started, 1)}), flush=True)
    if not cfg.block:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(cfg.app_name)
    return url
