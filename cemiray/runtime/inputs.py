"""Checking a job's inputs before Ray starts (runtime): every path or URI a config reads.

`INPUTS` declares, per config class (by name), which fields are inputs and what kind each is;
`check_inputs(config)` checks them after the config loads and before the job runs (also under
`--dry-run`), so a misspelt path fails in one line naming the key and the path instead of inside
a Ray task. Kinds and what is checked (local paths and `file://` URLs; other URLs, `s3://`,
`gs://`, `memory://`, ..., are left to the job, which names them when it opens them):

* `source`: a face source URI (cemiray.data.sources) parses and its file or folder exists;
  `toyfaces:` and a bare `orl:` (the project's ORL copy) pass. A bare path gets the hint of the
  `<kind>:` it needs.
* `model`: a recogniser (cemiray.models.recognizer): a cemiray model folder (config.json),
  a `.pth?arch=NAME` / `.pt` file, an `.onnx` file, or `dlib`.
* `pipeline`: a CemiFace pipeline folder (model_index.json); `uncond`: an unconditional
  generator folder (unconditional.json).
* `bin`: a verification `.bin` file (`bin:` prefix optional); `path`: a file or folder;
  `file`: a file.
* `checkpoint`: a training checkpoint folder, given to the `verify_checkpoint` the caller passes
  (cemiray.cli passes the train part's full check, which opens every pickle weights-only), else
  only checked to be a folder. Checkpoints are checked first.

Outputs (`out`, `results`, `summary_json`) are not inputs; nor is anything a job makes itself
(quickstart renders its data; `from_scratch` trains the models the loop would otherwise load).
A list field is checked item by item; `None` and empty values are not checked."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cemiray.runtime.config import ConfigError

SOURCE, MODEL, PIPELINE, GENERATOR, UNCOND, BIN, PATH, FILE, CHECKPOINT = (
    "source", "model", "pipeline", "generator", "uncond", "bin", "path", "file", "checkpoint")
KIND_WORDS = {SOURCE: "face source URI", MODEL: "recogniser", PIPELINE: "CemiFace pipeline folder",
              GENERATOR: "CemiFace pipeline folder or null:<size>",
              UNCOND: "unconditional generator folder", BIN: "verification .bin",
              PATH: "file or folder", FILE: "file", CHECKPOINT: "training checkpoint folder"}
SOURCE_SUFFIXES = {".parquet": "parquet", ".rec": "recordio", ".idx": "recordio", ".bin": "bin"}
SHIPPED_FR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "assets", "toyfaces", "fr")
TRAINED_FR = ("it exists after `cemiray train-fr`",
              f"e.g. the shipped ToyFaces recogniser: model={SHIPPED_FR}")


@dataclass(frozen=True)
class Input:
    """One input field: its dotted path in the config, its kind, what to say when its default
    does not exist (`made_by`: what makes it, what to pass instead), and when it is read at all
    (`when(config)`; default: always)."""

    field: str
    kind: str
    made_by: tuple[str, str] = ("", "")
    when: Callable[[Any], bool] | None = None


def _loop_reads(name: str) -> Callable[[Any], bool]:
    """Quickstart's loop reads `experiment.<name>` unless it is off or trains that model."""
    def reads(cfg: Any) -> bool:
        return cfg.loop and (name == "judge" or not cfg.from_scratch)
    return reads


INPUTS: dict[str, tuple[Input, ...]] = {
    "QuickstartConfig": (Input("experiment.recognizer", MODEL, when=_loop_reads("recognizer")),
                         Input("experiment.generator", PIPELINE, when=_loop_reads("generator")),
                         Input("experiment.judge", MODEL, when=_loop_reads("judge"))),
    "TrainFRConfig": (Input("resume_from", CHECKPOINT), Input("data", SOURCE),
                      Input("verification", BIN)),
    "TrainGenConfig": (Input("resume_from", CHECKPOINT), Input("data", SOURCE),
                       Input("recognizer", MODEL), Input("init_from", PIPELINE),
                       Input("variation_table", PATH), Input("variation_guide", PATH)),
    "TrainUncondConfig": (Input("resume_from", CHECKPOINT), Input("data", SOURCE)),
    # a train-gan checkpoint holds no DeepSpeed state (safetensors + JSON): the job checks it
    # tensor by tensor itself, before Ray starts (cemiray.train.gan.verify_resume_from)
    "TrainGANConfig": (Input("resume_from", PATH), Input("data", SOURCE)),
    "TrainAttrConfig": (Input("resume_from", CHECKPOINT), Input("data", SOURCE),
                        Input("holdout", SOURCE)),
    "EvaluateConfig": (Input("model", MODEL, made_by=TRAINED_FR), Input("verification", BIN),
                       Input("datasets", SOURCE), Input("reference", SOURCE)),
    "AnalyzeCentresConfig": (Input("data", SOURCE), Input("model", MODEL, made_by=TRAINED_FR),
                             Input("head", PATH), Input("verification", BIN)),
    "BenchFRConfig": (Input("orl", SOURCE),),
    "ServeConfig": (Input("recognizer", MODEL), Input("generator", PIPELINE),
                    Input("variation_estimator", PATH)),
    "BenchServeConfig": (Input("recognizer", MODEL), Input("generator", PIPELINE)),
    "GenerateConfig": (Input("seeds", PATH), Input("generator", GENERATOR),
                       Input("recognizer", MODEL), Input("judge", MODEL),
                       Input("leakage_audit", FILE), Input("variation_estimator", PATH)),
    "SeedsConfig": (Input("recognizer", MODEL), Input("judge", MODEL), Input("inquiry", SOURCE),
                    Input("embedding_files", PATH), Input("generator", UNCOND),
                    Input("gan", PATH), Input("attribute_model", PATH),
                    Input("leakage_data", SOURCE), Input("leakage_centres", PATH),
                    Input("probe_data", SOURCE)),
    "ExperimentConfig": (Input("recognizer", MODEL), Input("judge", MODEL),
                         Input("generator", PIPELINE), Input("variation_labeller", PATH),
                         Input("variation_estimator", PATH)),
    "FairnessConfig": (Input("recognizer", MODEL), Input("generator", PIPELINE),
                       Input("gan", PATH), Input("attribute_model", PATH),
                       Input("attributes_judge", PATH), Input("judge", MODEL),
                       Input("leakage_data", SOURCE)),
    "LabelAttrConfig": (Input("data", SOURCE), Input("model", PATH)),
    "RenderConfig": (),
    "BenchUNetConfig": (),
    "BenchGANConfig": (Input("gan", PATH), Input("uncond", UNCOND), Input("judge", MODEL),
                       Input("attributes", PATH), Input("attributes_judge", PATH),
                       Input("generator", PIPELINE), Input("recognizer", MODEL),
                       Input("real", SOURCE), Input("real_floor", SOURCE),
                       Input("train_data", SOURCE)),
    "BenchGenerateConfig": (),
    "BenchPipelineConfig": (),
    "BenchPipelineFaultsConfig": (),
    "GpuCheckConfig": (),
    "BenchVariationConfig": (Input("generator", PIPELINE), Input("recognizer", MODEL),
                             Input("judge", MODEL), Input("estimator", PATH)),
}


class InputError(ConfigError):
    """An input of a job's config is missing or not what its key takes; the message names the
    key and the path."""


def check_inputs(config: Any,
                 verify_checkpoint: Callable[[str, str], object] | None = None) -> None:
    """Raise InputError naming the first unusable input (checkpoints first) and the keys of any
    other unusable ones; a config class absent from INPUTS has no declared inputs."""
    declared = sorted(INPUTS.get(type(config).__name__, ()), key=lambda i: i.kind != CHECKPOINT)
    problems: list[tuple[str, str]] = []
    cause: ValueError | None = None
    for spec in declared:
        if spec.when is not None and not spec.when(config):
            continue
        value = _get(config, spec.field)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if item is None or item == "":
                continue
            key = f"{spec.field}[{i}]" if isinstance(value, (list, tuple)) else spec.field
            try:
                problem = CHECKS[spec.kind](str(item), key, verify_checkpoint)
            except ValueError as exc:  # the checkpoint check's refusal says it all
                problems.append((key, str(exc)))
                cause = cause or exc
                continue
            if problem:
                problems.append((key, _message(config, spec, key, str(item), problem)))
    if problems:
        also = [key for key, _ in problems[1:]]
        rest = f" (also unusable: {', '.join(also)})" if also else ""
        raise InputError(problems[0][1] + rest) from (cause if problems[0][1] == str(cause)
                                                     else None)


def _get(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _message(config: Any, spec: Input, key: str, value: str, problem: str) -> str:
    """`key=value: problem`, the path made absolute when it was relative, and for a default
    that does not exist what makes it and what to pass instead."""
    path = value.partition(":")[2] if spec.kind == SOURCE and ":" in value else value
    path = path.removeprefix("bin:").partition("?")[0]
    if problem.startswith(PATH_PROBLEMS) and "://" not in path and \
            not os.path.isabs(os.path.expanduser(path)):
        problem = f"{os.path.abspath(os.path.expanduser(path))} {problem}"
    text = f"{key}={value}: {problem}"
    if _is_default(config, spec.field):
        text = text.split(NEAREST)[0]  # what makes the default says more than its nearest folder
        made, instead = spec.made_by
        text += f" (the default{'; ' + made if made else ''}); pass {spec.field}=PATH"
        text += f", {instead}" if instead else ""
    return text


def _is_default(config: Any, dotted: str) -> bool:
    """Whether a field was left at its default (not given in the file or on the command line)."""
    owner, _, name = dotted.rpartition(".")
    if owner and _is_default(config, owner):
        return True
    node = _get(config, owner) if owner else config
    return name not in node.model_fields_set


# --- the checks: each returns what is wrong ('' when nothing) -------------------------------


def _local(url: str) -> str | None:
    """The local path of a URL, None for one this module leaves to the job (remote, memory)."""
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if "://" in url else os.path.expanduser(url)


def _exists(path: str, want: str = "") -> str:
    """'' if `path` exists (as a file / folder when `want` says so) and can be read."""
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        while os.path.dirname(parent) != parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent != os.path.dirname(os.path.abspath(path)) and os.path.dirname(parent) != parent:
            return f"does not exist{NEAREST}{parent})"
        return "does not exist"
    if want == "file" and not os.path.isfile(path):
        return "is a folder, not a file"
    if want == "folder" and not os.path.isdir(path):
        return "is a file, not a folder"
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        return "cannot be read (permission denied)"
    return ""


def _path(url: str, *_: object, want: str = "") -> str:
    path = _local(url)
    return "" if path is None else _exists(path, want)


def _bin(url: str, *_: object) -> str:
    return _path(url.removeprefix("bin:"), want="file")


def _marked_folder(url: str, marker: str, what: str, made: str) -> str:
    path = _local(url)
    if path is None:
        return ""
    problem = _exists(path, "folder")
    if not problem and not os.path.isfile(os.path.join(path, marker)):
        problem = f"is not {what} (no {marker} in it; {made})"
    return problem


def _pipeline(url: str, *_: object) -> str:
    return _marked_folder(url, "model_index.json", "a CemiFace pipeline folder",
                          "`cemiray train-gen` writes one at OUT/generator")


def _generator(url: str, *_: object) -> str:
    """`generate`'s generator: a pipeline folder, or the null generator `null:<size>` (no files;
    the job checks its size)."""
    return "" if url.startswith("null:") else _pipeline(url)


def _uncond(url: str, *_: object) -> str:
    return _marked_folder(url, "unconditional.json", "an unconditional generator folder",
                          "`cemiray train-uncond` writes one")


def _model(url: str, *_: object) -> str:
    if url == "dlib":
        return ""
    base, _, query = url.partition("?")
    path = _local(base)
    if path is None:
        return ""
    if base.endswith((".onnx", ".pth", ".pt")):
        problem = _exists(path, "file")
        if not problem and base.endswith((".pth", ".pt")) and "arch=" not in query:
            problem = ("is a state dict without its architecture: write "
                       f"{base}?arch=iresnet50 (or the arch it was trained as)")
        return problem
    problem = _exists(path)
    missing = [n for n in ("config.json", "model.safetensors")
               if not os.path.isfile(os.path.join(path, n))]
    if not problem and missing:
        problem = (f"is not a recogniser (no {' or '.join(missing)} in it): expected a cemiray "
                   "model folder (config.json + model.safetensors), a .pth?arch=NAME state dict "
                   "or an .onnx file")
    return problem


def _source(text: str, key: str, *_: object) -> str:
    from cemiray.data.sources import KINDS, Source

    try:
        source = Source.parse(text)
    except ValueError as exc:
        prefix, colon, _ = text.partition(":")
        if (colon and prefix.strip().isidentifier()) or _local(text) is None:
            return str(exc)  # a kind (known or not) was written: SourceError says what is wrong
        kind = SOURCE_SUFFIXES.get(os.path.splitext(text.rstrip("/"))[1].lower(), "imagefolder")
        problem = _exists(os.path.expanduser(text))
        kinds = ", ".join(k for k in KINDS if k != "toyfaces")
        return (f"{problem + ', and a' if problem else 'a'} source needs its kind: "
                f"'<kind>:<path>', e.g. {key}={kind}:{text} (kinds: {kinds}; or "
                "toyfaces:?ids=0-99&samples=10)")
    if source.kind == "toyfaces" or text.strip().lower() == "orl:":
        return ""
    want = {"bin": "file", "imagefolder": "folder", "orl": "folder"}.get(source.kind, "")
    return _path(source.url, want=want)


def _checkpoint(url: str, key: str, verify: Callable[[str, str], object] | None) -> str:
    path = _local(url)
    if path is None:
        return ""  # a remote checkpoint is checked by the workers once Ray has downloaded it
    path = os.path.abspath(path)
    if verify is not None:
        verify(path, key)  # raises a ValueError (CheckpointError) naming the key and the file
        return ""
    return _exists(path, "folder")


PATH_PROBLEMS = ("does not exist", "is ", "cannot be read")
NEAREST = " (the nearest folder that exists: "
CHECKS: dict[str, Callable[[str, str, Any], str]] = {
    SOURCE: _source, MODEL: _model, PIPELINE: _pipeline, GENERATOR: _generator, UNCOND: _uncond,
    BIN: _bin,
    PATH: _path, FILE: lambda url, *_: _path(url, want="file"), CHECKPOINT: _checkpoint,
}
