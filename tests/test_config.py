import json
import subprocess
import sys

import pytest

from cemiray.apps.quickstart import QuickstartConfig
from cemiray.cli import JOBS, main
from cemiray.runtime.config import ConfigError, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("train_identities: 7\nworld:\n  size: 48\n")
    cfg = load_config(QuickstartConfig, str(path), ["world.seed=3", "ray.num_cpus=1"])
    assert (cfg.train_identities, cfg.world.size, cfg.world.seed, cfg.ray.num_cpus) == (7, 48, 3, 1)


@pytest.mark.parametrize(
    "override, fragment",
    [("trian_identities=3", "trian_identities"), ("world.size=big", "world.size"),
     ("nokeyvalue", "key=value"), ("train_identities=1", "train_identities")],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(QuickstartConfig, None, [override])


def test_config_saved_as_json_on_memory_fs():
    cfg = QuickstartConfig(out="memory://cfgtest")
    url = cfg.save(cfg.out)
    from cemiray.data import storage

    assert json.loads(storage.read_text(url))["out"] == "memory://cfgtest"


def test_dry_run_prints_resolved_config(capsys):
    assert main(["quickstart", "--dry-run", "world.size=24"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["world"]["size"] == 24 and printed["train_identities"] == 200


def test_cli_console_script_dry_run():
    out = subprocess.run(
        [sys.executable, "-m", "cemiray.cli", "quickstart", "--dry-run"],
        check=True, capture_output=True, text=True,
    ).stdout
    assert json.loads(out)["out"] == "runs/quickstart"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_has_help(job):
    with pytest.raises(SystemExit) as exc:
        main([job, "--help"])
    assert exc.value.code == 0


def test_a_partly_given_section_keeps_the_jobs_own_section_defaults(tmp_path):
    from cemiray.apps.experiment.config import ExperimentConfig
    from cemiray.bench.fr import BenchFRConfig

    cfg = load_config(BenchFRConfig, overrides=["distributed.torch_threads=1"])
    assert cfg.distributed.num_workers == 1 and cfg.distributed.zero_stage == 0
    assert cfg.distributed.torch_threads == 1
    path = tmp_path / "exp.yaml"
    path.write_text("fr:\n  epochs: 3\n  distributed: {torch_threads: 1}\n"
                    "sets:\n  - {m: [0.5]}\n")
    exp = load_config(ExperimentConfig, str(path), ["fr.width=8"])
    assert (exp.fr.epochs, exp.fr.width, exp.fr.distributed.num_workers) == (3, 8, 1)
    assert exp.fr.distributed.checkpoint_every == 10**6 and exp.fr.distributed.torch_threads == 1
