"""`cemiray <job> [--config FILE] [--dry-run] [key=value ...]`: one entry point for every job.

Each job is a config class and a `run(config)` function in the package; heavy modules (torch, Ray)
are imported only when a job runs, so `--help` and `--dry-run` answer at once."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from cemiray.runtime.config import ConfigError, load_config


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
    "bench-serve": Job("cemiray.bench.serve", "BenchServeConfig",
                       "benchmark: HTTP embedding throughput and latency against in-process"),
    "train-gen": Job("cemiray.train.gen", "TrainGenConfig",
                     "train the CemiFace generator with Ray Train and DeepSpeed"),
    "train-uncond": Job("cemiray.train.uncond", "TrainUncondConfig",
                        "train the unconditional face generator that makes identity seeds"),
    "seeds": Job("cemiray.pipeline.seeds.job", "SeedsConfig",
                 "identity seeds: sources, uniqueness/leakage/quality filters, attribute quotas"),
    "experiment": Job("cemiray.apps.experiment.loop", "ExperimentConfig",
                      "the CemiFace loop: synthetic sets per m, FR on each, report"),
    "analyze-centres": Job("cemiray.apps.analyze_centres", "AnalyzeCentresConfig",
                           "FR trained on images grouped by similarity to their class centre"),
    "render": Job("cemiray.pipeline.render", "RenderConfig", "render a ToyFaces split as a dataset"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cemiray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="job", metavar="JOB")
    for name, job in sorted(JOBS.items()):
        sp = sub.add_parser(name, help=job.summary, description=job.summary)
        sp.add_argument("--config", help="YAML config file (fsspec URL)")
        sp.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p


def main(argv: list[str] | None = None, job: str | None = None) -> int:
    """Run a job. With `job` given (the jobs/ entry points), argv holds only that job's options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if job is not None:
        argv = [job, *argv]
    args = _parser().parse_args(argv)
    if not args.job:
        _parser().print_help()
        return 2
    config_cls, run = JOBS[args.job].load()
    if any(o in ("-h", "--help") for o in args.overrides):
        _parser().parse_args([args.job, "--help"])
    try:
        config = load_config(config_cls, args.config, args.overrides)
    except ConfigError as exc:
        print(f"cemiray {args.job}: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config.to_json())
        return 0
    run(config)
    return 0


def job_main(job: str):
    """The `main(argv=None)` of a `jobs/` entry point for one job."""

    def entry(argv: list[str] | None = None) -> int:
        return main(argv, job=job)

    entry.__doc__ = f"Run `cemiray {job}` with these options."
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
