"""Typed job configs (runtime): YAML + `key=value` overrides, `--dry-run`, saved beside outputs.

Typed job configs: one pydantic model per job, loaded from YAML, overridden from the command
line with `key=value` (dotted keys reach nested models), printed resolved with `--dry-run`, and
saved as JSON beside every output."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cemiray.data import storage
from cemiray.runtime.config_keys import explain_error, parse_value

C = TypeVar("C", bound="JobConfig")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key or file."""


class JobConfig(BaseModel):
    """Base of every job config: unknown keys are errors, so a misspelt override never passes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    def save(self, folder_url: str, name: str = "config.json") -> str:
        url = storage.join(folder_url, name)
        storage.atomic_write_text(url, self.to_json() + "\n")
        return url



def apply_override(data: dict, dotted_key: str, value: Any) -> None:
    keys = dotted_key.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted_key!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def with_section_defaults(cls: type[BaseModel], data: dict) -> dict:
    """Fill a partly given section from the section's own default: a job whose default is, say,
    one DeepSpeed worker keeps it when only `distributed.torch_threads=1` is given, instead of
    falling back to the section class's plain defaults. Only sections typed as one model class
    are filled (a union such as a schedule keeps exactly what was given)."""
    out = dict(data)
    for name, field in cls.model_fields.items():
        given, kind = out.get(name), field.annotation
        if not (isinstance(given, dict) and isinstance(kind, type) and issubclass(kind, BaseModel)):
            continue
        default = field.get_default(call_default_factory=True)
        if not isinstance(default, kind):
            continue
        base = default.model_dump(mode="python", exclude_unset=True)
        out[name] = _merge(base, with_section_defaults(kind, given))
    return out


def _merge(base: Any, given: Any) -> Any:
    if isinstance(base, dict) and isinstance(given, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in given.items()}}
    return given


def load_config(cls: type[C], path: str | None = None, overrides: list[str] | None = None) -> C:
    """Build `cls` from an optional YAML file, then `key=value` overrides, then validate. Every
    problem is a ConfigError of one line per wrong key: the key, what it takes, an example."""
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(storage.read_text(path)) or {}
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or _one_line(exc)
            raise ConfigError(f"--config {path}: not valid YAML ({where}{problem})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping, not {type(data).__name__}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              "(`--help` lists the keys)")
        key, _, value = item.partition("=")
        apply_override(data, key.strip(), _parse_override(key.strip(), value))
    try:
        return cls.model_validate(with_section_defaults(cls, data))
    except ValidationError as exc:
        raise ConfigError("\n".join(explain_error(cls, err) for err in exc.errors())) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parse_override(key: str, text: str) -> Any:
    """`parse_value`, except that a value written as a list or mapping must parse as one."""
    if text.strip()[:1] in ("[", "{"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or _one_line(exc)
            form, quoted = ("list", '["orl:", "toyfaces:?ids=0-9&samples=2"]') \
                if text.strip().startswith("[") else ("mapping", '{"orl:": ORL}')
            raise ConfigError(f"{key}={text}: not a valid {form} ({problem}); put items holding "
                              f"':', ',', '?' or '#' in double quotes: {key}='{quoted}'") from None
    value = parse_value(text)
    if isinstance(value, dict) and list(value.items()) == [(text.strip()[:-1], None)]:
        return text.strip()  # `data=orl:` is the URI `orl:`, not the mapping {orl: null}
    return value


class RayConfig(BaseModel):
    """How a job reaches Ray: `address=None` starts an in-process local cluster (or joins the one
    `ray job submit` runs it in, via RAY_ADDRESS)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = None
    object_store_mb: int | None = 512
    log_to_driver: bool = False
    reap_on_exit: bool = Field(True, description="a local cluster started by the job ends with "
                               "its driver, even on kill -9 (a watchdog reaps its processes)")
    progress_bars: bool = Field(False, description="Ray Data's own progress bars (off: the jobs "
                                "print their own progress lines)")


class WorldConfig(BaseModel):
    """The ToyFaces world: its seed, image size and nuisance difficulty."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    size: int = 32
    difficulty: float = 1.0
