"""The RayService manifest is generated from the project's Serve config, never hand-copied: the
committed file must equal a fresh generation, and its serveConfigV2 must be a Serve config Ray
accepts whose application builds against this package."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_rayservice_is_generated_from_the_serve_config():
    check = subprocess.run([sys.executable, str(ROOT / "cluster" / "make_rayservice.py"), "--check"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_serve_config_v2_is_valid_and_matches_the_project():
    from ray.serve.schema import ServeDeploySchema

    from cemiray.runtime.config import load_config
    from cemiray.serve.config import ServeConfig
    from cemiray.serve.deploy_config import serve_config

    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    cfg = load_config(ServeConfig, str(ROOT / "cluster" / "configs" / "serve-gpu.yaml"))
    assert embedded == serve_config(cfg)
    app = embedded["applications"][0]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    ServeConfig.model_validate(app["args"])  # the builder's args are a valid ServeConfig
