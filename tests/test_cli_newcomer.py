"""What a newcomer meets on the command line: `--help` lists every config key with its type,
default, description and list / mapping syntax; a wrong key, value or input path is one line
(exit code 2, no traceback) that names the key, before Ray starts; a user error raised inside a
job's run is one line too, and CEMIRAY_TRACEBACK=1 brings the traceback back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from cemiray.cli import JOBS, config_help, user_message
from cemiray.runtime.config import ConfigError, load_config
from cemiray.runtime.config_keys import plain_type
from cemiray.runtime.inputs import INPUTS, InputError, check_inputs

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FR = ROOT / "cemiray" / "assets" / "toyfaces" / "fr"


def cemiray(*args: str, cwd: Path, traceback: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`cemiray ARGS` in a subprocess; prints how long the command itself took."""
    env = {k: v for k, v in os.environ.items() if k != "CEMIRAY_TRACEBACK"}
    if traceback:
        env["CEMIRAY_TRACEBACK"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cemiray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    print(f"cemiray {' '.join(args)}: rc {proc.returncode} in {time.perf_counter() - t0:.1f} s")
    return proc


def one_line_error(proc: subprocess.CompletedProcess, job: str) -> str:
    """The single `cemiray JOB: ...` line of a refused command (exit code 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cemiray {job}: "), proc.stderr[-3000:]
    return lines[0]


def assert_ray_not_started(proc: subprocess.CompletedProcess, out: Path) -> None:
    assert not out.exists(), "the job got as far as creating its out folder"
    text = proc.stdout + proc.stderr
    assert "Started a local Ray instance" not in text and "ray::" not in text


# ---- --help ---------------------------------------------------------------------------------


def test_train_fr_help_lists_keys_types_defaults_descriptions_and_list_syntax(tmp_path):
    proc = cemiray("train-fr", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # unwrapped
    assert "data str = toyfaces:?seed=0&ids=0-499&samples=20&size=32" in text
    assert "[input: face source URI]" in text
    assert "resume_from str | null = null [input: training checkpoint folder]" in text
    assert "a verification .bin evaluated during training" in text  # a description
    assert "lr_milestones list[float] = [0.5,0.75,0.9]" in text
    assert "a list: lr_milestones='[0.5,0.75]'" in text
    assert "distributed.num_workers int = 2" in text  # nested, dotted, the job's own default
    assert "distributed (DistributedConfig)" in text  # grouped under its section
    assert "CEMIRAY_TRACEBACK=1" in text
    assert cemiray("train-fr", "-h", cwd=tmp_path).stdout == proc.stdout


def test_evaluate_help_shows_verification_with_list_syntax(tmp_path):
    proc = cemiray("evaluate", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "verification list[str] = []" in text
    assert "a list: verification='[a.bin,b.bin]'" in text
    assert "a mapping: labels='{a: b}'" in text
    assert """datasets='["orl:","toyfaces:?ids=0-9&samples=2"]'""" in text


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_key_of_every_job_is_in_its_help(job):
    cls, _ = JOBS[job].load()
    text = config_help(job, cls)

    def keys(model: type[BaseModel], prefix: str = ""):
        for name, info in model.model_fields.items():
            kind = plain_type(info.annotation)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from keys(kind, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    missing = [k for k in keys(cls) if f"\n  {k} " not in text and f"\n  {k}\n" not in text]
    assert not missing, f"`cemiray {job} --help` does not list {missing}"


# ---- a wrong key or value -------------------------------------------------------------------


def test_a_list_given_as_one_value_says_how_to_write_a_list(tmp_path):
    line = one_line_error(cemiray("evaluate", "model=X", "verification=pairs.bin", cwd=tmp_path),
                          "evaluate")
    assert "verification" in line and "write a list: verification='[pairs.bin]'" in line


def test_a_misspelt_key_is_named_with_the_likely_one(tmp_path):
    line = one_line_error(cemiray("train-fr", "lr_milstones=[0.5]", "--dry-run", cwd=tmp_path),
                          "train-fr")
    assert "lr_milstones: unknown key; did you mean lr_milestones?" in line


def test_value_errors_name_the_key_the_type_and_an_example():
    from cemiray.apps.evaluate import EvaluateConfig
    from cemiray.train.fr import TrainFRConfig

    with pytest.raises(ConfigError) as caught:
        load_config(TrainFRConfig, None, ["distributed.num_workers=two", "ray.adress=x"])
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("distributed.num_workers: Input should be a valid integer")
    assert "(got two); it takes int; e.g. distributed.num_workers=" in lines[0]
    assert lines[1] == "ray.adress: unknown key; did you mean ray.address? (`--help` lists every key)"
    with pytest.raises(ConfigError, match=r"""datasets='\["orl:", "toyfaces:\?ids=0-9"""):
        load_config(EvaluateConfig, None, ["model=m", "datasets=[toyfaces:?ids=0-9&samples=2]"])
    quoted = load_config(EvaluateConfig, None, ["model=m",
                                                'datasets=["toyfaces:?ids=0-9&samples=2", orl:]'])
    assert quoted.datasets == ["toyfaces:?ids=0-9&samples=2", "orl:"]
    assert load_config(TrainFRConfig, None, ["data=orl:"]).data == "orl:"  # not {orl: null}


# ---- a missing input path, before Ray starts ------------------------------------------------


@pytest.mark.parametrize("data", ["/nonexistent/faces.parquet",
                                  "parquet:/nonexistent/faces.parquet"])
def test_a_misspelt_data_path_fails_in_one_line_before_ray_starts(tmp_path, data):
    out = tmp_path / "x"
    proc = cemiray("train-fr", f"data={data}", f"out={out}", cwd=tmp_path)
    line = one_line_error(proc, "train-fr")
    assert f"data={data}: does not exist" in line
    if not data.startswith("parquet:"):
        assert "e.g. data=parquet:/nonexistent/faces.parquet" in line
    assert_ray_not_started(proc, out)


def test_dry_run_checks_the_inputs_too(tmp_path):
    out = tmp_path / "x"
    proc = cemiray("train-fr", "--dry-run", "data=parquet:faces.parquet", f"out={out}",
                   cwd=tmp_path)
    line = one_line_error(proc, "train-fr")
    assert f"data=parquet:faces.parquet: {tmp_path / 'faces.parquet'} does not exist" in line
    assert proc.stdout == "" and not out.exists()
    line = one_line_error(cemiray("analyze-centres", "--dry-run", cwd=tmp_path), "analyze-centres")
    assert "model=runs/train_fr/backbone:" in line and "does not exist (the default; it exists " \
        "after `cemiray train-fr`); pass model=PATH" in line


def test_quickstart_dry_run_passes_in_a_fresh_folder(tmp_path):
    proc = cemiray("quickstart", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "runs").exists()


# ---- user errors while a job runs -----------------------------------------------------------


def test_a_refused_checkpoint_is_one_line_and_the_traceback_comes_back_on_request(tmp_path):
    empty, out = tmp_path / "ckpt", tmp_path / "out"
    empty.mkdir()
    args = ("train-fr", f"resume_from={empty}", f"out={out}")
    line = one_line_error(cemiray(*args, cwd=tmp_path), "train-fr")
    assert f"resume_from {empty}: no DeepSpeed checkpoint in it" in line
    proc = cemiray(*args, cwd=tmp_path, traceback=True)
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert "CheckpointError" in proc.stderr and proc.stderr.strip().splitlines()[-1] == line
    assert not out.exists()


def test_a_value_error_inside_a_jobs_run_is_one_line(tmp_path):
    """train-gen's run loads the recogniser and refuses an embedding size the preset does not
    take, before Ray starts: a ValueError from inside `run`."""
    out = tmp_path / "out"
    proc = cemiray("train-gen", f"recognizer={SHIPPED_FR}", "preset_overrides={id_dim: 7}",
                   f"out={out}", cwd=tmp_path)
    line = one_line_error(proc, "train-gen")
    assert "embeds to 512 dimensions but preset tiny takes id_dim=7" in line
    assert_ray_not_started(proc, out)


class _RayWrapped(ValueError):
    """A stand-in of a Ray task error: a ValueError subclass carrying the worker's exception."""

    __module__ = "ray.exceptions"

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray.exceptions.RayTaskError(ValueError): long\nremote traceback")
        self.cause = cause


def test_a_ray_wrapped_error_is_told_by_its_cause():
    assert user_message(_RayWrapped(ValueError("bad shard"))) == "bad shard"
    assert user_message(ValueError()) == "ValueError"


# ---- the table of inputs --------------------------------------------------------------------


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_declares_its_inputs_and_they_are_real_fields(job):
    cls, _ = JOBS[job].load()
    assert cls.__name__ in INPUTS, f"{cls.__name__}: declare its inputs in cemiray.runtime.inputs"
    for spec in INPUTS[cls.__name__]:
        model = cls
        for part in spec.field.split("."):
            assert part in model.model_fields, f"{cls.__name__}: no field {spec.field}"
            model = plain_type(model.model_fields[part].annotation)


def test_inputs_that_are_not_local_paths_pass_and_formats_are_checked(tmp_path, monkeypatch):
    from cemiray.apps.evaluate import EvaluateConfig
    from cemiray.pipeline.generate.config import GenerateConfig
    from cemiray.train.fr import TrainFRConfig

    check_inputs(TrainFRConfig(data="toyfaces:?ids=0-9&samples=2", resume_from="s3://b/ck"))
    check_inputs(EvaluateConfig(model="dlib", datasets=["orl:", "parquet:memory://x/faces"],
                                verification=["gs://b/lfw.bin"]))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no model.safetensors in it"):
        check_inputs(EvaluateConfig(model=str(folder), datasets=["orl:"]))
    (folder / "model.safetensors").write_bytes(b"")
    check_inputs(EvaluateConfig(model=str(folder), datasets=["orl:"]))
    with pytest.raises(InputError, match=r"model=x.pth: .*x.pth does not exist"):
        check_inputs(EvaluateConfig(model="x.pth", datasets=["orl:"]))
    (tmp_path / "a.pth").write_bytes(b"")
    with pytest.raises(InputError, match=r"without its architecture: write .*a.pth\?arch="):
        check_inputs(EvaluateConfig(model=str(tmp_path / "a.pth"), datasets=["orl:"]))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        check_inputs(GenerateConfig(seeds="s.parquet", generator=str(folder),
                                    recognizer=str(folder), judge="j"))
    assert str(caught.value).startswith(f"seeds=s.parquet: {tmp_path / 's.parquet'} does not exist")
    assert "(also unusable: generator, judge)" in str(caught.value)
    (tmp_path / "s.parquet").write_bytes(b"")  # the null generator has no files to check
    check_inputs(GenerateConfig(seeds="s.parquet", generator="null:112", recognizer=str(folder)))
    with pytest.raises(InputError, match=r"^generator=null112: .*null112 does not exist"):
        check_inputs(GenerateConfig(seeds="s.parquet", generator="null112"))
    with pytest.raises(InputError, match=r"verification\[1\]=bin:b.bin: .*b.bin does not exist"):
        (tmp_path / "a.bin").write_bytes(b"")
        check_inputs(EvaluateConfig(model=str(folder), verification=["a.bin", "bin:b.bin"]))
