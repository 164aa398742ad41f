"""`cemiray <job> [--config FILE] [--dry-run] [key=value ...]`: one entry point for every job.

Each job is a config class and a `run(config)` function in the package; heavy modules (torch, Ray)
are imported only when a job runs, so `--help` and `--dry-run` answer at once. `cemiray JOB --help`
lists every config key from the pydantic model. A config's input paths are checked before the job
runs (cemiray.runtime.inputs), under --dry-run too; a wrong key, value or path and a user error
raised by the job (ValueError and its kinds, missing / unreadable files) print one line
`cemiray JOB: message` and exit with code 2 (CEMIRAY_TRACEBACK=1: with the traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import textwrap
import traceback
from dataclasses import dataclass
from typing import Any, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cemiray.data.storage import StorageError
from cemiray.runtime.config import load_config
from cemiray.runtime.config_keys import (
    cli_value,
    example,
    is_list,
    is_mapping,
    plain_type,
    shell_arg,
    type_name,
)
from cemiray.runtime.inputs import INPUTS, KIND_WORDS, SOURCE, check_inputs


@dataclass(frozen=True)
class Job:
    module: str
    config: str
    summary: str
    run: str = "run"

    def load(self):
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config), getattr(mod, self.run)


JOBS: dict[str, Job] = {
    "quickstart": Job("cemiray.apps.quickstart", "QuickstartConfig", "the main job on the embedded default"),
    "train-fr": Job("cemiray.train.fr", "TrainFRConfig",
                    "train an IResNet + margin head with Ray Train and DeepSpeed"),
    "evaluate": Job("cemiray.apps.evaluate", "EvaluateConfig",
                    "verification (.bin) and score-distribution reports of a recogniser"),
    "bench-fr": Job("cemiray.bench.fr", "BenchFRConfig",
                    "benchmark: Ray Train efficiency, ToyFaces calibration, ORL scores"),
    "serve": Job("cemiray.serve.app", "ServeConfig",
                 "Ray Serve: generation, embedding and verification over HTTP"),
    "generate": Job("cemiray.pipeline.generate.job", "GenerateConfig",
                    "generate a synthetic face dataset as exactly-once Parquet shards"),
    "bench-unet": Job("cemiray.bench.unet_flops", "BenchUNetConfig",
                      "benchmark: UNet FLOP/s against the measured GEMM peak, per preset"),
    "bench-generate": Job("cemiray.bench.generate", "BenchGenerateConfig",
                          "benchmark: Ray Data generation against a bare sampler loop"),
    "bench-pipeline": Job("cemiray.bench.pipeline", "BenchPipelineConfig",
                          "benchmark: the generate pipeline's ceiling with the null generator "
                          "(img/s per core, driver and object-store memory, CPU per stage)"),
    "bench-pipeline-faults": Job("cemiray.bench.pipeline_faults", "BenchPipelineFaultsConfig",
                                 "benchmark: generate at 50K null images under kill -9 of a "
                                 "sampler actor, a writer and the driver, then rerun"),
    "gpu-check": Job("cemiray.bench.gpu_check", "GpuCheckConfig",
                     "the GPU path in one JSON: sampler img/s and utilisation (bf16/fp16, "
                     "compile), generate with two actors on one device, train-fr bf16 steps, "
                     "one served /v1/generate; tiny sizes on the CPU"),
    "bench-serve": Job("cemiray.bench.serve", "BenchServeConfig",
                       "benchmark: HTTP embedding throughput and latency against in-process"),
    "train-gen": Job("cemiray.train.gen", "TrainGenConfig",
                     "train the CemiFace generator with Ray Train and DeepSpeed"),
    "train-uncond": Job("cemiray.train.uncond", "TrainUncondConfig",
                        "train the unconditional face generator that makes identity seeds"),
    "train-gan": Job("cemiray.train.gan", "TrainGANConfig",
                     "train the StyleGAN face generator that makes new identities fast"),
    "train-attr": Job("cemiray.train.attr", "TrainAttrConfig",
                      "train a face-attribute predictor (demographics, variation) on any "
                      "labelled set"),
    "bench-gan": Job("cemiray.bench.gan", "BenchGANConfig",
                     "benchmark: GAN identities' speed, realism, novelty and demographic "
                     "control, measured by independent models"),
    "bench-variation": Job("cemiray.bench.variation", "BenchVariationConfig",
                           "benchmark: requested against measured variation of the generator, "
                           "by the independent estimator and judge"),
    "label-attr": Job("cemiray.pipeline.label_attr", "LabelAttrConfig",
                      "label a whole face dataset with an attribute model (Ray Data)"),
    "seeds": Job("cemiray.pipeline.seeds.job", "SeedsConfig",
                 "identity seeds: sources, uniqueness/leakage/quality filters, attribute quotas"),
    "experiment": Job("cemiray.apps.experiment.loop", "ExperimentConfig",
                      "the CemiFace loop: synthetic sets per m, FR on each, report"),
    "fairness": Job("cemiray.apps.fairness", "FairnessConfig",
                    "FR on a demographically balanced and a skewed GAN-identity set, accuracy "
                    "per group with 95% CIs"),
    "analyze-centres": Job("cemiray.apps.analyze_centres", "AnalyzeCentresConfig",
                           "FR trained on images grouped by similarity to their class centre"),
    "render": Job("cemiray.pipeline.render", "RenderConfig", "render a ToyFaces split as a dataset"),
}


TRACEBACK_ENV = "CEMIRAY_TRACEBACK"
# What a job raises for bad user input (ConfigError, SourceError, CheckpointError, ... are
# ValueErrors; StorageError names a URL that could not be read): one line, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError, StorageError)
EPILOG_END = (f"A wrong key, value or input path prints one line and exits with code 2; set "
              f"{TRACEBACK_ENV}=1 for the full traceback.")


def _parser(detailed: str | None = None) -> argparse.ArgumentParser:
    """The parser; job `detailed` gets the list of its config keys (built only for --help)."""
    p = argparse.ArgumentParser(prog="cemiray", description=__doc__.splitlines()[0],
                                epilog=f"`cemiray JOB --help` lists a job's config keys. "
                                       f"{EPILOG_END}")
    sub = p.add_subparsers(dest="job", metavar="JOB")
    for name, job in sorted(JOBS.items()):
        extra = {}
        if name == detailed:
            extra = {"epilog": config_help(name, job.load()[0]),
                     "formatter_class": argparse.RawDescriptionHelpFormatter}
        sp = sub.add_parser(name, help=job.summary, description=job.summary, **extra)
        sp.add_argument("--config", help="YAML config file (fsspec URL) holding the keys below")
        sp.add_argument("--dry-run", action="store_true",
                        help="check the config and its input paths, print it resolved and exit")
        sp.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (the keys below)")
    return p


# --- `cemiray JOB --help`: the config keys, from the pydantic model ----------------------------


def config_help(job: str, cls: type[BaseModel]) -> str:
    """Every key of a job's config (nested ones dotted, grouped by section) with its type,
    default, description, list / mapping example and whether it is an input path."""
    width = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
    tags = {spec.field: KIND_WORDS[spec.kind] for spec in INPUTS.get(cls.__name__, ())}
    blocks: list[str] = []
    sections: list[tuple[str, type[BaseModel], Any, str]] = [("", cls, None, "")]
    leaves: list[tuple[str, Any, Any]] = []
    while sections:
        prefix, model, instance, heading = sections.pop(0)
        lines, nested = [], []
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            default = getattr(instance, name) if instance is not None else \
                info.get_default(call_default_factory=True)
            kind = plain_type(info.annotation)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                title = info.description or _first_sentence(kind.__doc__)
                off = " = null" if default is None else ""
                title = f"{key} ({type_name(info.annotation)}{off}){': ' if title else ''}{title}"
                nested.append((f"{key}.", kind, default if isinstance(default, kind) else None,
                               title))
                continue
            leaves.append((key, info, default))
            lines += _key_lines(key, info, default, tags.get(key), width)
        if lines:
            blocks.append("\n".join(([_wrap(heading, width, "", "  ")] if heading else [])
                                    + lines))
        sections = nested + sections
    given = [(k, i, d) for k, i, d in leaves if d is not PydanticUndefined]
    lists = [(k, i.annotation, d, i) for k, i, d in given if is_list(i.annotation)]
    maps = [(k, i.annotation, d, i) for k, i, d in given
            if get_origin(plain_type(i.annotation)) is dict]
    nested_key = next((shell_arg(k, d) for k, _, d in given if "." in k and d is not None),
                      "section.key=value")
    sources = [k for k, _, _, _ in lists if tags.get(k) == KIND_WORDS[SOURCE]]
    quoted = f"{sources[0]}='[\"orl:\", \"toyfaces:?ids=0-9\"]'" if sources else \
        """key='["a:b", "c,d"]'"""
    rows = [("nested keys are dotted:", nested_key),
            ("a list:", _example(*lists[0], tags.get(lists[0][0])) if lists else "key='[a,b]'"),
            ("a mapping:", _example(*maps[0]) if maps else "key='{a: 1}'"),
            ("items holding : , ? #", f"in double quotes: {quoted}")]
    intro = "\n".join(
        [_wrap(f"config keys of `cemiray {job}`, each given as key=value (values are read as "
               "YAML: 3, 0.5, true, null, text):", width, "", "  ")]
        + [f"  {label:<24}{text}" for label, text in rows]
        + [_wrap(line, width, "  ", "    ") for line in (
            "--config FILE.yaml holds the same keys as a YAML mapping; key=value overrides it.",
            ("[input] keys are checked (exist, readable, right format) before the job starts, "
             "and under --dry-run."))])
    return "\n\n".join([intro, *blocks, _wrap(EPILOG_END, width, "", "")])


def _first_sentence(doc: str | None) -> str:
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    head, dot, _ = paragraph.partition(". ")
    return head + ("." if dot else "")


def _key_lines(key: str, info: Any, default: Any, tag: str | None, width: int) -> list[str]:
    shown = "required" if default is PydanticUndefined else f"= {cli_value(default)}"
    head = f"{type_name(info.annotation)} {shown}"
    column, indent = 32, " " * 34
    if len(key) + 4 <= column:
        lines = [_wrap(f"  {key:<{column - 2}}{head}", width, "", " " * column)]
    else:
        lines = [f"  {key}", _wrap(head, width, " " * column, " " * column)]
    about = " ".join(filter(None, [f"[input: {tag}]" if tag else "", info.description or ""]))
    if about:
        lines.append(_wrap(about, width, indent, indent))
    if (is_list(info.annotation) or is_mapping(info.annotation)) and \
            default is not PydanticUndefined:
        form = "a list" if is_list(info.annotation) else "a mapping"
        lines.append(_wrap(f"{form}: {_example(key, info.annotation, default, info, tag)}", width,
                           indent, indent + "  "))
    return lines


def _example(key: str, annotation: Any, default: Any, info: Any = None,
             tag: str | None = None) -> str:
    if tag == KIND_WORDS[SOURCE] and is_list(annotation):  # source URIs, quoted as they must be
        return shell_arg(key, ["orl:", "toyfaces:?ids=0-9&samples=2"])
    return shell_arg(key, example(annotation, default, getattr(info, "description", None)))


def _wrap(text: str, width: int, first: str, rest: str) -> str:
    return textwrap.fill(text, width, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)


# --- running a job -------------------------------------------------------------------------


def _verify_checkpoint(path: str, key: str) -> None:
    """The train part's full check of a checkpoint folder (every pickle opened weights-only)."""
    from cemiray.train.checkpoint_check import verify_checkpoint

    verify_checkpoint(path, key)


def user_message(exc: BaseException) -> str:
    """The message of a user error; a Ray-wrapped one (a worker's ValueError) by its cause."""
    while type(exc).__module__.startswith("ray") and isinstance(
            getattr(exc, "cause", None), BaseException):
        exc = exc.cause
    return str(exc).strip() or type(exc).__name__


def main(argv: list[str] | None = None, job: str | None = None) -> int:
    """Run a job. With `job` given (the jobs/ entry points), argv holds only that job's options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if job is not None:
        argv = [job, *argv]
    wants_help = any(a in ("-h", "--help") for a in argv)
    named = next((a for a in argv if a in JOBS), None) if wants_help else None
    parser = _parser(named)
    args = parser.parse_args(argv)
    if not args.job:
        parser.print_help()
        return 2
    config_cls, run = JOBS[args.job].load()
    if any(o in ("-h", "--help") for o in args.overrides):
        _parser(args.job).parse_args([args.job, "--help"])
    try:
        config = load_config(config_cls, args.config, args.overrides)
        check_inputs(config, _verify_checkpoint)
        if args.dry_run:
            print(config.to_json())
            return 0
        run(config)
    except USER_ERRORS as exc:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            traceback.print_exc()
        for line in user_message(exc).splitlines():
            print(f"cemiray {args.job}: {line}", file=sys.stderr)
        return 2
    return 0


def job_main(job: str):
    """The `main(argv=None)` of a `jobs/` entry point for one job."""

    def entry(argv: list[str] | None = None) -> int:
        return main(argv, job=job)

    entry.__doc__ = f"Run `cemiray {job}` with these options."
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
