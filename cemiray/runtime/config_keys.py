"""What a config key takes (runtime): type names, examples, and one-line errors per key.

Read from the pydantic models themselves: the one-line messages of `load_config` and the key
list of `cemiray JOB --help` (cemiray.cli) both come from here, so they always agree with the
configs."""

from __future__ import annotations

import difflib
import json
import re
import shlex
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def parse_value(text: str) -> Any:
    """A CLI value as YAML does it: `3` → int, `0.5` → float, `true` → bool, `[1, 2]` → list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text



def plain_type(annotation: Any) -> Any:
    """`X | None` → X and `Annotated[X, ...]` → X (the type a value is written as)."""
    while True:
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
        elif origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation


def type_name(annotation: Any) -> str:
    """A type as users read it: `list[str]`, `str | null`, `tiny|small|paper`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (list, tuple, set, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(annotation, "__name__", str(annotation))


def is_list(annotation: Any) -> bool:
    return get_origin(plain_type(annotation)) in (list, tuple, set)


def is_mapping(annotation: Any) -> bool:
    """A dict, a model, or a union of models (a section written as `{k: v}`)."""
    kind = plain_type(annotation)
    members = [a for a in get_args(kind) if a is not type(None)] \
        if get_origin(kind) in (Union, types.UnionType) else [kind]
    return get_origin(kind) is dict or all(isinstance(a, type) and issubclass(a, BaseModel)
                                           for a in members)


def cli_value(value: Any, inside: bool = False) -> str:
    """A value as it is written after `key=` (YAML flow style): `[a.bin,b.bin]`, `{a: 1}`,
    `true`, `null`; strings YAML would read otherwise are double-quoted."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True) or \
            value.model_dump(mode="json")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set)):
        return "[" + ",".join(cli_value(v, True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{cli_value(k, True)}: {cli_value(v, True)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, str):
        try:
            plain = (yaml.safe_load(f"[{value}]") == [value]) if inside else \
                parse_value(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain and value else json.dumps(value)
    return str(value)


def shell_arg(key: str, value: Any) -> str:
    """`key=value` as typed in a shell: `verification='[a.bin,b.bin]'`."""
    return f"{key}={shlex.quote(cli_value(value))}"


def example(annotation: Any, default: Any = None, description: str | None = None) -> Any:
    """An example value of a list or mapping field (None for other fields): two items, from the
    default when it has two, else made from the item type (`[a.bin,b.bin]` when the default or
    the description names a file suffix)."""
    kind = plain_type(annotation)
    origin, args = get_origin(kind), get_args(kind)
    if origin in (list, tuple, set):
        if origin is tuple and args and Ellipsis not in args:
            return list(default) if default else [_sample(a, 0, "") for a in args]
        if isinstance(default, (list, tuple)) and len(default) >= 2:
            return list(default[:2])
        item = args[0] if args else str
        if default and isinstance(plain_type(item), type) and \
                issubclass(plain_type(item), BaseModel):
            return list(default[:1])
        suffix = _suffix(default[0] if default and isinstance(default[0], str) else "",
                         description or "")
        return [_sample(item, 0, suffix), _sample(item, 1, suffix)]
    if origin is dict:
        if isinstance(default, dict) and default:
            return dict(list(default.items())[:1])
        key_type, value_type = args or (str, str)
        return {_sample(key_type, 0, ""): _sample(value_type, 1, "")}
    if is_mapping(kind):
        return default if isinstance(default, BaseModel) else {}
    return None


def _suffix(item: str, description: str) -> str:
    found = re.search(r"\.([a-z][a-z0-9]{1,8})\b", item.rsplit("/", 1)[-1]) or \
        re.search(r"(?:^|\s|`)\.([a-z][a-z0-9]{1,8})\b", description)
    return f".{found.group(1)}" if found else ""


def _sample(kind: Any, i: int, suffix: str) -> Any:
    kind = plain_type(kind)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        return choices[i % len(choices)]
    if kind is bool:
        return (True, False)[i % 2]
    if kind is int:
        return (1, 2)[i % 2]
    if kind is float:
        return (0.5, 1.0)[i % 2]
    if get_origin(kind) is dict:
        return {"x": 0.5}
    if get_origin(kind) in (list, tuple):
        return [1, 2]
    return "ab"[i % 2] + suffix if kind in (str, Any) else {}


def field_at(cls: type[BaseModel], loc: tuple) -> tuple[Any, Any, str, bool]:
    """(FieldInfo or None, annotation, key) of an error's location, the key dotted as users
    write it but list items as `key[i]` (and a union member's tag kept: `schedule.uniform.high`).
    The annotation is None when the location cannot be followed (an unknown key); the flag
    says whether `key=` can be written as it is (no list index, no union tag in it)."""
    info, annotation, key, writable = None, cls, "", True
    for part in loc:
        kind = plain_type(annotation)
        origin, args = get_origin(kind), get_args(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel) and part in kind.model_fields:
            info, annotation = kind.model_fields[part], kind.model_fields[part].annotation
            key = f"{key}.{part}" if key else str(part)
        elif origin in (list, set, tuple) and isinstance(part, int) and args:
            index = 0 if origin is not tuple or Ellipsis in args else min(part, len(args) - 1)
            info, annotation, key, writable = None, args[index], f"{key}[{part}]", False
        elif origin is dict and args:
            info, annotation, key = None, args[1], f"{key}.{part}"
        elif origin in (Union, types.UnionType):
            found = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel) and
                     part in (a.__name__, getattr(a.model_fields.get("kind"), "default", None))]
            if not found:
                return None, None, ".".join(str(p) for p in loc), False
            annotation, key, writable = found[0], f"{key}.{part}", False
        else:
            return None, None, ".".join(str(p) for p in loc), False
    return info, annotation, key, writable


def explain_error(cls: type[BaseModel], err: dict) -> str:
    """One pydantic error as one line: the key, pydantic's words, what the key takes and an
    example (`write a list: key='[x,y]'` for a list given as one value)."""
    loc = tuple(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not loc:
        return msg
    info, annotation, key, writable = field_at(cls, loc)
    given, kind = err.get("input"), err["type"]
    if kind == "extra_forbidden":
        _, parent, where, _ = field_at(cls, loc[:-1]) if loc[:-1] else (None, cls, "", True)
        parent = plain_type(parent)
        names = list(parent.model_fields) if isinstance(parent, type) and \
            issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        mean = f"; did you mean {where + '.' if where else ''}{close[0]}?" if close else ""
        key = f"{where}.{loc[-1]}" if where else str(loc[-1])
        return f"{key}: unknown key{mean} (`--help` lists every key)"
    if annotation is None:
        return f"{key}: {msg}"
    default = info.get_default(call_default_factory=True) if info is not None else None
    default = None if default is PydanticUndefined else default
    takes = type_name(annotation)
    if kind == "missing":
        description = f" ({info.description})" if info is not None and info.description else ""
        return f"{key}: Field required; pass {key}=...{description}"
    if is_list(annotation) and kind in ("list_type", "tuple_type", "set_type"):
        items = given if isinstance(given, (list, tuple)) else [given]
        sample = example(annotation, default, info.description if info else None)
        return (f"{key}: {msg}: it takes a {takes}; write a list: {shell_arg(key, items)} "
                f"(several: {shell_arg(key, sample)})")
    if is_mapping(annotation) and kind in ("dict_type", "model_type", "model_attributes_type"):
        sample = example(annotation, default, info.description if info else None)
        return f"{key}: {msg}: it takes a {takes}; write a mapping: {shell_arg(key, sample)}"
    shown = "" if isinstance(given, (dict, list)) else f" (got {cli_value(given)})"
    hint = f"; e.g. {shell_arg(key, default)}" if writable and default is not None and \
        not isinstance(default, BaseModel) else ""
    return f"{key}: {msg}{shown}; it takes {takes}{hint}"


