"""Strict checks of the cluster manifests before anyone applies them.

KubeRay resources are checked against the operator's CRD schemas twice: with `jsonschema` (types,
enums, required fields, quantity patterns) and with a strict pass that, like
`kubectl apply --validate=strict`, reports every field the schema does not declare (the CRDs do not
set `additionalProperties: false`, so Kubernetes would silently drop a misspelt field). A few
KubeRay rules that the schema cannot express are checked too. The Ray cluster-launcher YAML is
checked against the `ray-schema.json` shipped inside the installed Ray package.

`python cluster/validate.py [FILE ...]` checks every manifest under cluster/ (or the files named)
and exits 1 on any error. CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
ROOT = CLUSTER_DIR.parent
CRD_DIR = ROOT / ".." / "shared" / "schemas" / "kuberay"
API_VERSION = "ray.io/v1"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
GPU_RESOURCE = "nvidia.com/gpu"
# Kubernetes validates the top-level `metadata` itself (the CRDs leave it a bare object).
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "labels", "annotations", "finalizers",
    "ownerReferences", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink",
}

Path_ = list[str | int]


def load_yaml_documents(path: Path) -> list[Any]:
    """Every YAML document in a file (a manifest file may hold several, split by `---`)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as f:
            return [doc for doc in yaml.load_all(f, Loader=loader) if doc is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc


def format_path(parts: Path_) -> str:
    """`spec.workerGroupSpecs[1].minReplicas`; keys holding dots or slashes are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", part):
            out += ("." if out else "") + part
        else:
            out += f"[{part!r}]"
    return out or "<root>"


def project_pins(root: Path = ROOT) -> dict[str, str]:
    """The versions pyproject.toml pins: `project`, `python` (its >= bound) and every dependency
    pinned with `==` (`ray`, `torch`, `fsspec`, ...), by lower-case name."""
    path = root / "pyproject.toml"
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    pins = {"project": project["version"]}
    python = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"].strip())
    if python is None:
        raise ValueError(f"{path}: requires-python {project['requires-python']!r} is not '>=X.Y'")
    pins["python"] = python.group(1)
    for dep in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;,]+)", dep.strip())
        if match:
            pins[match.group(1).lower()] = match.group(3)
    for name in ("ray", "torch"):
        if name not in pins:
            raise ValueError(f"{path}: no exact '{name}==' pin in [project].dependencies")
    return pins


# ---- KubeRay CRD schemas -------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str, crd_dir: Path = CRD_DIR, version: str = "v1") -> dict:
    """The `openAPIV3Schema` of one served version of a KubeRay CRD."""
    if kind not in CRD_FILES:
        raise ValueError(f"no KubeRay CRD for kind {kind!r} (known: {', '.join(CRD_FILES)})")
    path = crd_dir / CRD_FILES[kind]
    if not path.is_file():
        raise FileNotFoundError(f"KubeRay CRD not found: {path}")
    (crd,) = load_yaml_documents(path)
    if crd.get("spec", {}).get("names", {}).get("kind") != kind:
        raise ValueError(f"{path}: is not the CRD of {kind}")
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise ValueError(f"{path}: has no version {version!r}")


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 marks optional nulls with `nullable`; JSON Schema needs a type list."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _openapi_to_jsonschema(value) for key, value in node.items()}
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def _crd_validator(kind: str, crd_dir: Path) -> jsonschema.Draft4Validator:
    # OpenAPI 3.0 schemas follow draft 4 (boolean exclusiveMinimum, no `const`).
    return jsonschema.Draft4Validator(_openapi_to_jsonschema(crd_schema(kind, crd_dir)))


def _schema_errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{format_path(list(e.absolute_path))}: {e.message}" for e in errors]


def _flatten(schema: dict) -> list[dict]:
    """A node and every schema of its allOf/anyOf/oneOf branches, which may declare fields too."""
    nodes = [schema]
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key, []):
            nodes.extend(_flatten(branch))
    return nodes


def _unknown(key: str, known: list[str], path: Path_) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{format_path(path)}: unknown field {key!r}{hint}"


def _object_meta_errors(value: Any, path: Path_) -> list[str]:
    if not isinstance(value, dict):
        return [f"{format_path(path)}: must be a mapping"]
    errors = [_unknown(k, sorted(OBJECT_META_FIELDS), path + [k])
              for k in value if k not in OBJECT_META_FIELDS]
    for field in ("labels", "annotations"):
        entries = value.get(field, {})
        if not isinstance(entries, dict):
            errors.append(f"{format_path(path + [field])}: must be a mapping of strings")
            continue
        errors += [f"{format_path(path + [field, k])}: must be a string"
                   for k, v in entries.items() if not isinstance(v, str)]
    return errors


def unknown_fields(value: Any, schema: dict, path: Path_ | None = None) -> list[str]:
    """Every field of `value` that `schema` does not declare, as `kubectl --validate=strict` sees
    it: declared `properties`, `additionalProperties` maps and `items` are followed; nothing is
    unknown below `x-kubernetes-preserve-unknown-fields: true`; an object node with neither
    properties nor additionalProperties accepts no field (Kubernetes would prune them all)."""
    errors: list[str] = []
    _walk(value, schema, list(path or []), errors)
    return errors


def _walk(value: Any, schema: dict, path: Path_, errors: list[str]) -> None:
    nodes = _flatten(schema)
    if any(n.get("x-kubernetes-int-or-string") for n in nodes):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            errors.append(f"{format_path(path)}: must be an integer or a string")
        return
    preserve = any(n.get("x-kubernetes-preserve-unknown-fields") for n in nodes)
    if isinstance(value, dict):
        props: dict[str, dict] = {}
        extra: Any = None
        for node in nodes:
            for key, sub in node.get("properties", {}).items():
                props.setdefault(key, sub)
            if extra is None:
                extra = node.get("additionalProperties")
        embedded = any(n.get("x-kubernetes-embedded-resource") for n in nodes)
        for key, child in value.items():
            where = path + [key]
            if key in props:
                bare_meta = key == "metadata" and not props[key].get("properties")
                if bare_meta and (not path or embedded):
                    errors.extend(_object_meta_errors(child, where))
                else:
                    _walk(child, props[key], where, errors)
            elif embedded and key in ("apiVersion", "kind"):
                continue
            elif embedded and key == "metadata":
                errors.extend(_object_meta_errors(child, where))
            elif isinstance(extra, dict):
                _walk(child, extra, where, errors)
            elif extra is True or preserve:
                continue
            else:
                errors.append(_unknown(key, sorted(props), where))
    elif isinstance(value, list):
        items = next((n["items"] for n in nodes if isinstance(n.get("items"), dict)), None)
        if items is not None:
            for index, item in enumerate(value):
                _walk(item, items, path + [index], errors)


def cluster_specs(doc: dict) -> Iterator[tuple[Path_, dict]]:
    """(path, RayClusterSpec) of every Ray cluster a resource describes."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "RayCluster":
        yield ["spec"], spec
    elif kind == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        yield ["spec", "rayClusterSpec"], spec["rayClusterSpec"]
    elif kind == "RayService" and isinstance(spec.get("rayClusterConfig"), dict):
        yield ["spec", "rayClusterConfig"], spec["rayClusterConfig"]


def pod_groups(spec: dict) -> Iterator[tuple[Path_, dict]]:
    """(path, group) of the head group and every worker group of a RayClusterSpec."""
    yield ["headGroupSpec"], spec.get("headGroupSpec") or {}
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield ["workerGroupSpecs", index], group


def _containers(group: dict) -> list[dict]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def gpus_per_pod(group: dict) -> int:
    """GPUs one pod of a group gets (the `nvidia.com/gpu` limits of its containers)."""
    return sum(int((c.get("resources") or {}).get("limits", {}).get(GPU_RESOURCE, 0))
               for c in _containers(group))


def _cluster_rule_errors(spec: dict, at: Path_, ray_version: str | None) -> list[str]:
    errors = []

    def err(path: Path_, message: str) -> None:
        errors.append(f"{format_path(at + path)}: {message}")

    if ray_version is not None and spec.get("rayVersion") != ray_version:
        err(["rayVersion"], f"is {spec.get('rayVersion')!r}, the project pins Ray {ray_version}")
    autoscaling = spec.get("enableInTreeAutoscaling") is True
    if autoscaling and (spec.get("autoscalerOptions") or {}).get("version") != "v2":
        err(["autoscalerOptions", "version"], "must be 'v2' when enableInTreeAutoscaling is true")
    head_params = (spec.get("headGroupSpec") or {}).get("rayStartParams") or {}
    if head_params.get("num-cpus") != "0":
        err(["headGroupSpec", "rayStartParams", "num-cpus"], "must be \"0\": no work on the head")
    names = set()
    for path, group in pod_groups(spec):
        pod = (group.get("template") or {}).get("spec") or {}
        if autoscaling and pod.get("restartPolicy") != "Never":
            err(path + ["template", "spec", "restartPolicy"],
                "must be 'Never' with the autoscaler (it removes idle pods itself)")
        for ci, container in enumerate(_containers(group)):
            where = path + ["template", "spec", "containers", ci]
            image = str(container.get("image", ""))
            if ray_version is not None and ray_version not in image.rpartition(":")[2]:
                err(where + ["image"], f"tag of {image!r} does not name Ray {ray_version}")
            env_names = {e.get("name") for e in container.get("env") or []}
            if path == ["headGroupSpec"] and "RAY_enable_autoscaler_v2" in env_names:
                err(where + ["env"], "set autoscalerOptions.version, not RAY_enable_autoscaler_v2 "
                    "(KubeRay rejects both)")
            resources = container.get("resources") or {}
            limit = resources.get("limits", {}).get(GPU_RESOURCE)
            request = resources.get("requests", {}).get(GPU_RESOURCE)
            if request is not None and str(request) != str(limit):
                err(where + ["resources"], f"{GPU_RESOURCE} requests must equal its limits")
        if path == ["headGroupSpec"]:
            continue
        name = group.get("groupName")
        if name in names:
            err(path + ["groupName"], f"{name!r} is used by two worker groups")
        names.add(name)
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 0)
        replicas = group.get("replicas")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            err(path, f"minReplicas {low} > maxReplicas {high}")
        if replicas is not None and isinstance(low, int) and isinstance(high, int) \
                and not low <= replicas <= high:
            err(path + ["replicas"], f"{replicas} is outside [minReplicas, maxReplicas]")
    return errors


def kuberay_rule_errors(doc: dict, ray_version: str | None = None) -> list[str]:
    """KubeRay rules the CRD schema cannot express, plus this project's: Ray version pinned,
    nothing scheduled on the head, autoscaler v2 with `restartPolicy: Never`."""
    errors = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: is {doc.get('apiVersion')!r}, expected {API_VERSION!r}")
    if not (doc.get("metadata") or {}).get("name"):
        errors.append("metadata.name: is required")
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayJob":
        if not spec.get("entrypoint"):
            errors.append("spec.entrypoint: is required (this project submits by entrypoint)")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            errors.append(f"spec.submissionMode: {mode!r} is not one of {sorted(SUBMISSION_MODES)}")
        if bool(spec.get("rayClusterSpec")) == bool(spec.get("clusterSelector")):
            errors.append("spec: give exactly one of rayClusterSpec and clusterSelector")
        if spec.get("clusterSelector") and spec.get("shutdownAfterJobFinishes"):
            errors.append("spec.shutdownAfterJobFinishes: cannot delete a cluster the job did "
                          "not create (clusterSelector)")
    for at, cluster in cluster_specs(doc):
        errors += _cluster_rule_errors(cluster, at, ray_version)
    return errors


def validate_kuberay(doc: Any, crd_dir: Path = CRD_DIR, ray_version: str | None = None,
                     rules: bool = True) -> list[str]:
    """Every error of one KubeRay resource: schema, unknown fields, then (with `rules`) the
    KubeRay and project rules. An empty list means it is valid."""
    if not isinstance(doc, dict):
        return ["<root>: a manifest must be a mapping"]
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        return [f"kind: {kind!r} is not a KubeRay resource ({', '.join(CRD_FILES)})"]
    schema = crd_schema(kind, crd_dir)
    errors = _schema_errors(_crd_validator(kind, crd_dir), doc)
    errors += unknown_fields(doc, schema)
    if rules:
        errors += kuberay_rule_errors(doc, ray_version)
    return errors


# ---- Ray cluster launcher ------------------------------------------------------------------


def launcher_schema_path() -> Path:
    """`ray/autoscaler/ray-schema.json` of the installed Ray, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("ray is not installed: its ray-schema.json is needed")
    return Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"


@functools.cache
def _launcher_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(launcher_schema_path().read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


def validate_launcher(config: Any) -> list[str]:
    """Every error of a cluster-launcher config: ray-schema.json (which forbids unknown keys),
    then the checks `ray up` makes before it starts a node."""
    if not isinstance(config, dict):
        return ["<root>: a cluster-launcher config must be a mapping"]
    errors = _schema_errors(_launcher_validator(), config)
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        return errors
    head = config.get("head_node_type")
    if head not in types:
        errors.append(f"head_node_type: {head!r} is not one of available_node_types")
    total_min = 0
    for name, node in types.items():
        if not isinstance(node, dict):
            continue
        low, high = node.get("min_workers", 0), node.get("max_workers", 0)
        if isinstance(low, int) and isinstance(high, int):
            total_min += low
            if name != head and low > high:
                errors.append(f"available_node_types.{name}: min_workers {low} > max_workers "
                              f"{high}")
    max_workers = config.get("max_workers")
    if isinstance(max_workers, int) and total_min > max_workers:
        errors.append(f"max_workers: {max_workers} is below the sum of min_workers ({total_min})")
    return errors


# ---- command line --------------------------------------------------------------------------


def check_file(path: Path, ray_version: str | None = None) -> list[str]:
    """Errors of one manifest file, each prefixed with the file (and document index)."""
    try:
        docs = load_yaml_documents(path)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    if not docs:
        return [f"{path}: holds no YAML document"]
    errors = []
    for index, doc in enumerate(docs):
        where = f"{path}" + (f" (document {index})" if len(docs) > 1 else "")
        launcher = isinstance(doc, dict) and "kind" not in doc and "cluster_name" in doc
        found = (validate_launcher(doc) if launcher
                 else validate_kuberay(doc, ray_version=ray_version))
        errors += [f"{where}: {message}" for message in found]
    return errors


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = [Path(a) for a in args] or sorted(
        [*CLUSTER_DIR.glob("kuberay/*.yaml"), *CLUSTER_DIR.glob("launcher/*.yaml")])
    ray_version = project_pins()["ray"]
    errors = [e for path in files for e in check_file(path, ray_version)]
    for error in errors:
        print(error, file=sys.stderr)
    print(f"{len(files)} file(s) checked, {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
