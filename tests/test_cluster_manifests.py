"""The cluster files under cluster/, checked with no cluster at hand: KubeRay resources strictly
against the operator's CRDs (an unknown field is an error, as with `kubectl --validate=strict`),
the launcher YAML against Ray's ray-schema.json, every version against pyproject.toml's pins, and
every RayJob entrypoint against jobs/ and cluster/configs/."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CRD_DIR = Path(__file__).parents[1] / ".." / "shared" / "schemas" / "kuberay"
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAYJOB_FILES = [p for p in KUBERAY_FILES if p.name.startswith("rayjob-")]
LAUNCHER = CLUSTER / "launcher" / "aws-gpu.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"


def _import_validator():
    spec = importlib.util.spec_from_file_location("cluster_validate", CLUSTER / "validate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


V = _import_validator()
PINS = V.project_pins(ROOT)

RAYSERVICE_FIXTURE = """
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: cemiray-serve-fixture
spec:
  serviceUnhealthySecondThreshold: 900
  serveConfigV2: |
    applications:
      - name: cemiray
        import_path: cemiray.serve.app:app_builder
        route_prefix: /
  rayClusterConfig:
    rayVersion: "2.60.0"
    enableInTreeAutoscaling: true
    autoscalerOptions: {version: v2}
    headGroupSpec:
      rayStartParams: {num-cpus: "0", dashboard-host: "0.0.0.0"}
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: ray-head
              image: cemiray:0.1.0-ray2.60.0-cu129
              ports: [{containerPort: 8000, name: serve}]
              resources: {limits: {cpu: "2", memory: 8Gi}}
    workerGroupSpecs:
      - groupName: gpu
        minReplicas: 1
        maxReplicas: 4
        template:
          spec:
            restartPolicy: Never
            containers:
              - name: ray-worker
                image: cemiray:0.1.0-ray2.60.0-cu129
                resources: {limits: {cpu: "8", memory: 48Gi, nvidia.com/gpu: 1}}
"""


@pytest.fixture(scope="module")
def crd_dir() -> Path:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR.resolve()}")
    return CRD_DIR


def _doc(path: Path) -> dict:
    (doc,) = V.load_yaml_documents(path)
    return doc


def _errors(doc: dict, crd_dir: Path) -> list[str]:
    return V.validate_kuberay(doc, crd_dir=crd_dir, ray_version=PINS["ray"])


def _dockerfile_args() -> dict[str, str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def _entrypoint(path: Path) -> tuple[str, Path]:
    """(the jobs/*.py script, the --config file) a RayJob's entrypoint names."""
    words = shlex.split(_doc(path)["spec"]["entrypoint"])
    scripts = [w for w in words if re.fullmatch(r"jobs/[a-z_]+\.py", w)]
    assert len(scripts) == 1, f"{path.name}: entrypoint names no single jobs/*.py: {words}"
    assert "--config" in words, f"{path.name}: entrypoint has no --config"
    return scripts[0], ROOT / words[words.index("--config") + 1]


def _quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---- the files are there and strictly valid ------------------------------------------------


def test_cluster_folder_holds_every_file():
    names = {p.name for p in KUBERAY_FILES}
    assert {"raycluster.yaml", "rayjob-train-gen.yaml", "rayjob-train-fr.yaml",
            "rayjob-generate.yaml"} <= names
    for path in (LAUNCHER, DOCKERFILE, CLUSTER / "README.md", CLUSTER / "Dockerfile.dockerignore"):
        assert path.is_file(), path


@pytest.mark.parametrize("path", KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_is_strictly_valid(path, crd_dir):
    docs = V.load_yaml_documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert _errors(doc, crd_dir) == [], path


def test_crd_loader_picks_v1(crd_dir):
    schema = V.crd_schema("RayCluster", crd_dir)
    workers = schema["properties"]["spec"]["properties"]["workerGroupSpecs"]["items"]
    assert {"minReplicas", "maxReplicas", "groupName"} <= set(workers["properties"])
    assert "authOptions" in schema["properties"]["spec"]["properties"]  # not in v1alpha1
    with pytest.raises(ValueError, match="v9"):
        V.crd_schema("RayCluster", crd_dir, version="v9")
    with pytest.raises(ValueError, match="RayCronJobb"):
        V.crd_schema("RayCronJobb", crd_dir)


def test_misspelt_worker_group_field_is_caught_only_by_the_strict_pass(crd_dir):
    doc = _doc(CLUSTER / "kuberay" / "raycluster.yaml")
    gpu = next(i for i, g in enumerate(doc["spec"]["workerGroupSpecs"]) if g["groupName"] == "gpu")
    doc["spec"]["workerGroupSpecs"][gpu]["minReplica"] = 1
    plain = jsonschema.Draft4Validator(V.crd_schema("RayCluster", crd_dir))
    assert plain.is_valid(doc), "the CRD alone accepts a misspelt field: the strict pass is needed"
    errors = _errors(doc, crd_dir)
    expected = (f"spec.workerGroupSpecs[{gpu}].minReplica: unknown field 'minReplica' "
                "(did you mean 'minReplicas'?)")
    assert errors == [expected]


def test_renamed_worker_group_field_fails_both_ways(crd_dir):
    doc = _doc(CLUSTER / "kuberay" / "raycluster.yaml")
    group = doc["spec"]["workerGroupSpecs"][1]
    group["minReplica"] = group.pop("minReplicas")
    errors = "\n".join(_errors(doc, crd_dir))
    assert "spec.workerGroupSpecs[1]: 'minReplicas' is a required property" in errors
    assert "spec.workerGroupSpecs[1].minReplica: unknown field" in errors


def test_misspelt_container_field_names_its_path(crd_dir):
    doc = _doc(CLUSTER / "kuberay" / "rayjob-train-gen.yaml")
    container = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    errors = _errors(doc, crd_dir)
    expected = ("spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0]."
                "imagePullPolicyy: unknown field 'imagePullPolicyy' "
                "(did you mean 'imagePullPolicy'?)")
    assert errors == [expected]


def _head(doc):
    return doc["spec"]["headGroupSpec"]


def _gpu_container(doc):
    return doc["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["metadata"].update(labelz={}), "metadata.labelz: unknown field"),
    (lambda d: d["spec"].update(rayversion="2.60.0"), "(did you mean 'rayVersion'?)"),
    (lambda d: _gpu_container(d)["resources"]["limits"].update(cpu="8 cores"),
     "resources.limits.cpu: '8 cores' does not match"),
    (lambda d: _gpu_container(d)["resources"]["limits"].update(cpu=[8]),
     "resources.limits.cpu: must be an integer or a string"),
    (lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["tolerations"][0].update(
        efect="NoSchedule"), "tolerations[0].efect: unknown field"),
    (lambda d: _head(d)["rayStartParams"].update({"num-gpus": 0}),
     "rayStartParams.num-gpus: 0 is not of type 'string'"),
    (lambda d: d["spec"]["autoscalerOptions"].update(version="v3"),
     "autoscalerOptions.version: 'v3' is not one of"),
    (lambda d: _head(d)["template"]["spec"]["containers"][0]["ports"][0].pop("containerPort"),
     "'containerPort' is a required property"),
])
def test_schema_and_strict_errors_name_the_field(mutate, fragment, crd_dir):
    doc = _doc(CLUSTER / "kuberay" / "raycluster.yaml")
    mutate(doc)
    errors = "\n".join(_errors(doc, crd_dir))
    assert fragment in errors


def test_free_form_maps_and_quantities_stay_valid(crd_dir):
    doc = _doc(CLUSTER / "kuberay" / "raycluster.yaml")
    _head(doc)["rayStartParams"]["object-store-memory"] = "4000000000"
    _gpu_container(doc)["resources"]["limits"].update(cpu=8, memory="48G")
    doc["metadata"]["annotations"] = {"team": "faces"}
    assert _errors(doc, crd_dir) == []


# ---- the strict pass on schema keywords the KubeRay CRDs do not use -------------------------


TINY_SCHEMA = {
    "type": "object",
    "properties": {
        "known": {"type": "string"},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"typed": {"type": "object", "properties": {"alpha": {}}}}},
        "closed": {"type": "object", "additionalProperties": False},
        "bare": {"type": "object"},
        "either": {"anyOf": [{"properties": {"x": {}}}, {"properties": {"y": {}}}]},
        "both": {"allOf": [{"properties": {"p": {}}}], "oneOf": [{"properties": {"q": {}}}]},
        "list": {"type": "array", "items": {"type": "object", "properties": {"k": {}}}},
        "port": {"x-kubernetes-int-or-string": True},
    },
}


@pytest.mark.parametrize("value, expected", [
    ({"known": "a", "free": {"anything": 1, "deep": {"x": 1}}}, []),
    ({"free": {"typed": {"alpha": 1, "alpah": 2}}},
     ["free.typed.alpah: unknown field 'alpah' (did you mean 'alpha'?)"]),
    ({"closed": {"x": 1}}, ["closed.x: unknown field 'x'"]),
    ({"bare": {"x": 1}}, ["bare.x: unknown field 'x'"]),
    ({"either": {"x": 1, "y": 2, "z": 3}}, ["either.z: unknown field 'z'"]),
    ({"both": {"p": 1, "q": 2, "r": 3}}, ["both.r: unknown field 'r'"]),
    ({"list": [{"k": 1}, {"kk": 2}]}, ["list[1].kk: unknown field 'kk' (did you mean 'k'?)"]),
    ({"port": 8080}, []),
    ({"port": "http"}, []),
    ({"port": True}, ["port: must be an integer or a string"]),
    ({"nown": 1}, ["nown: unknown field 'nown' (did you mean 'known'?)"]),
])
def test_strict_pass_follows_schema_keywords(value, expected):
    assert V.unknown_fields(value, TINY_SCHEMA) == expected


# ---- RayService (the lead writes the real one later) ----------------------------------------


def test_rayservice_fixture_validates_and_misspellings_fail(crd_dir):
    doc = yaml.safe_load(RAYSERVICE_FIXTURE)
    assert _errors(doc, crd_dir) == []

    bad = copy.deepcopy(doc)
    bad["spec"]["serveConfigv2"] = bad["spec"].pop("serveConfigV2")
    container = bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]
    container["resources"]["limitz"] = container["resources"].pop("limits")
    errors = "\n".join(_errors(bad, crd_dir))
    assert "spec.serveConfigv2: unknown field 'serveConfigv2' (did you mean 'serveConfigV2'?)" \
        in errors
    assert ("spec.rayClusterConfig.workerGroupSpecs[0].template.spec.containers[0].resources."
            "limitz: unknown field") in errors


# ---- KubeRay and project rules the schema cannot express -----------------------------------


def _job_spec(d):
    return d["spec"]["rayClusterSpec"]


@pytest.mark.parametrize("name, mutate, fragment", [
    ("raycluster.yaml", lambda d: _head(d)["rayStartParams"].update({"num-cpus": "4"}),
     "num-cpus: must be \"0\""),
    ("raycluster.yaml", lambda d: d["spec"].update(rayVersion="2.59.0"),
     "spec.rayVersion: is '2.59.0'"),
    ("raycluster.yaml", lambda d: d["spec"]["autoscalerOptions"].pop("version"),
     "autoscalerOptions.version: must be 'v2'"),
    ("raycluster.yaml", lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"].update(
        restartPolicy="Always"), "workerGroupSpecs[0].template.spec.restartPolicy: must be"),
    ("raycluster.yaml", lambda d: _head(d)["template"]["spec"]["containers"][0].update(
        env=[{"name": "RAY_enable_autoscaler_v2", "value": "1"}]), "KubeRay rejects both"),
    ("raycluster.yaml", lambda d: d["spec"]["workerGroupSpecs"][1].update(minReplicas=9),
     "minReplicas 9 > maxReplicas 8"),
    ("raycluster.yaml", lambda d: d["spec"]["workerGroupSpecs"][1].update(groupName="cpu"),
     "'cpu' is used by two worker groups"),
    ("raycluster.yaml", lambda d: _gpu_container(d).update(image="cemiray:0.1.0-ray2.59.0-cu129"),
     "does not name Ray 2.60.0"),
    ("raycluster.yaml", lambda d: _gpu_container(d)["resources"]["requests"].update(
        {"nvidia.com/gpu": 2}), "requests must equal its limits"),
    ("raycluster.yaml", lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion: is"),
    ("rayjob-generate.yaml", lambda d: d["spec"].update(submissionMode="K8sMode"),
     "submissionMode: 'K8sMode' is not one of"),
    ("rayjob-generate.yaml", lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "x"}),
     "exactly one of rayClusterSpec and clusterSelector"),
    ("rayjob-train-fr.yaml", lambda d: _job_spec(d)["workerGroupSpecs"][0].update(replicas=3),
     "replicas: 3 is outside"),
])
def test_rules_beyond_the_schema(name, mutate, fragment, crd_dir):
    doc = _doc(CLUSTER / "kuberay" / name)
    mutate(doc)
    assert fragment in "\n".join(_errors(doc, crd_dir))


def test_every_kuberay_cluster_has_a_cpu_free_head_and_gpu_pods():
    for path in KUBERAY_FILES:
        doc = _doc(path)
        for at, spec in V.cluster_specs(doc):
            assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", path
            gpu_groups = [g for g in spec["workerGroupSpecs"] if V.gpus_per_pod(g)]
            assert gpu_groups, f"{path}: {V.format_path(at)} has no GPU worker group"
            assert all(V.gpus_per_pod(g) == 1 for g in gpu_groups), path


def test_raycluster_autoscales_both_groups_with_autoscaler_v2():
    spec = _doc(CLUSTER / "kuberay" / "raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] < group["maxReplicas"]
    assert V.gpus_per_pod(groups["gpu"]) == 1 and V.gpus_per_pod(groups["cpu"]) == 0


# ---- the cluster launcher ------------------------------------------------------------------


def _launcher() -> dict:
    return _doc(LAUNCHER)


def test_launcher_validates_against_rays_schema():
    assert V.launcher_schema_path().is_file()
    assert V.validate_launcher(_launcher()) == []


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c["available_node_types"]["gpu-g5"].update(max_worker=8), "'max_worker' was"),
    (lambda c: c.update(setup_command=[]), "'setup_command' was unexpected"),
    (lambda c: c["docker"].update(imagee="x"), "'imagee' was unexpected"),
    (lambda c: c["available_node_types"]["gpu-p5"]["resources"].update(GPU=-1),
     "available_node_types.gpu-p5.resources.GPU: -1 is less than the minimum"),
    (lambda c: c.update(head_node_type="gpu-h100"), "head_node_type: 'gpu-h100' is not one of"),
    (lambda c: c.update(max_workers=1) or c["available_node_types"]["gpu-g5"].update(
        min_workers=2), "below the sum of min_workers"),
])
def test_misspelt_launcher_keys_fail(mutate, fragment):
    config = _launcher()
    mutate(config)
    assert fragment in "\n".join(V.validate_launcher(config))


def test_launcher_nodes_head_and_setup():
    config = _launcher()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    families = {t["node_config"]["InstanceType"].split(".")[0] for t in gpu_types.values()}
    assert families == {"g5", "p4d", "p5"}
    for name, node in gpu_types.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    setup = " ".join(config["setup_commands"])
    assert f'"torch=={PINS["torch"]}"' in setup
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu12\d\b", setup)
    assert "pip install --no-cache-dir ~/cemiray" in setup
    assert "~/cemiray" in config["file_mounts"]


# ---- versions agree ------------------------------------------------------------------------


def _images() -> list[tuple[str, str]]:
    found = []
    for path in KUBERAY_FILES:
        for _, spec in V.cluster_specs(_doc(path)):
            for _, group in V.pod_groups(spec):
                for container in group["template"]["spec"]["containers"]:
                    found.append((path.name, container["image"]))
    return found


def test_ray_version_agrees_everywhere():
    ray = PINS["ray"]
    args = _dockerfile_args()
    assert args["RAY_VERSION"] == ray
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-" in text
    assert '"ray[data,train,serve]==${RAY_VERSION}"' in text
    for path in KUBERAY_FILES:
        for at, spec in V.cluster_specs(_doc(path)):
            assert spec["rayVersion"] == ray, f"{path.name}: {V.format_path(at)}.rayVersion"
    for name, image in _images():
        assert f"-ray{ray}-" in image.rpartition(":")[2], f"{name}: {image}"
    launcher = _launcher()
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{ray}-")
    assert f"ray.__version__ == '{ray}'" in " ".join(launcher["setup_commands"])
    assert f"| Ray | {ray} " in (CLUSTER / "README.md").read_text(encoding="utf-8")


def test_image_tag_python_torch_and_storage_pins_agree():
    args = _dockerfile_args()
    python_tag = "py" + PINS["python"].replace(".", "")
    assert args["PYTHON_TAG"] == python_tag
    assert f"-{python_tag}-" in _launcher()["docker"]["image"]
    assert args["TORCH_VERSION"] == PINS["torch"]
    assert re.fullmatch(r"cu12\d", args["TORCH_CUDA"]), args["TORCH_CUDA"]
    assert args["S3FS_VERSION"] == PINS["fsspec"], "s3fs is released in step with fsspec"
    expected = f"cemiray:{PINS['project']}-ray{PINS['ray']}-{args['TORCH_CUDA']}"
    assert expected in DOCKERFILE.read_text(encoding="utf-8")  # the documented build command
    for name, image in _images():
        assert image == expected, f"{name}: {image}"
    setup = " ".join(_launcher()["setup_commands"])
    assert f"whl/{args['TORCH_CUDA']}" in setup
    assert f"s3fs=={args['S3FS_VERSION']}" in setup and f"gcsfs=={args['GCSFS_VERSION']}" in setup
    readme = (CLUSTER / "README.md").read_text(encoding="utf-8")
    for fact in (PINS["torch"], PINS["python"], args["TORCH_CUDA"], expected.split(":")[1]):
        assert fact in readme, fact


def test_dockerfile_structure():
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert sum(line.startswith("FROM ") for line in lines) == 1
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    project_at = text.index("pip install --no-cache-dir . ")
    assert torch_at < project_at, "torch's CUDA build must be installed before the project"
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in text
    for copied in ("pyproject.toml", "cemiray/", "jobs/", "cluster/configs/"):
        assert re.search(rf"^COPY .*\b{re.escape(copied)}", text, flags=re.MULTILINE), copied
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") + 1:].count("!cemiray/") == 1


# ---- entrypoints and their configs ---------------------------------------------------------


@pytest.mark.parametrize("path", RAYJOB_FILES, ids=lambda p: p.name)
def test_rayjob_runs_a_gpu_config_that_fits_its_cluster(path):
    spec = _doc(path)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": "/home/ray/cemiray"}
    _, config_path = _entrypoint(path)
    assert config_path.is_file(), f"{path.name}: {config_path} does not exist"
    assert config_path.parent == CLUSTER / "configs"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    dist = config["distributed"] if "distributed" in config else config["fr"]["distributed"]
    assert re.match(r"(s3|gs)://", config["out"])
    if "storage_path" in dist:  # training jobs checkpoint through Ray Train's storage
        assert re.match(r"(s3|gs)://", dist["storage_path"])
    assert dist["use_gpu"] is True and dist["num_workers"] >= 1
    cluster = spec["rayClusterSpec"]
    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        per_pod = V.gpus_per_pod(group)
        if per_pod:
            pods = group["maxReplicas"] if autoscaling else group["replicas"]
            gpus += pods * per_pod
            cpu = group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
            assert dist["cpus_per_worker"] <= _quantity(cpu) / per_pod, path.name
    assert gpus >= dist["num_workers"], f"{path.name}: {gpus} GPUs for {dist['num_workers']}"


@pytest.mark.parametrize("path", RAYJOB_FILES, ids=lambda p: p.name)
def test_rayjob_entrypoint_script_exists(path):
    script, _ = _entrypoint(path)
    if not (ROOT / script).is_file():
        pytest.skip(f"{script} is not written yet ({path.name} names it)")
    assert (ROOT / script).read_text(encoding="utf-8").strip()


@pytest.mark.parametrize("path", RAYJOB_FILES, ids=lambda p: p.name)
def test_rayjob_config_loads_with_its_jobs_config_class(path):
    from cemiray.cli import JOBS
    from cemiray.runtime.config import load_config

    script, config_path = _entrypoint(path)
    job = Path(script).stem.replace("_", "-")
    if job not in JOBS:
        pytest.skip(f"job {job!r} is not registered in cemiray.cli yet")
    try:
        config_cls, _ = JOBS[job].load()
    except ImportError as exc:
        pytest.skip(f"job {job!r} does not import yet: {exc}")
    config = load_config(config_cls, str(config_path))
    dist = config.distributed if hasattr(config, "distributed") else config.fr.distributed
    assert dist.use_gpu is True


# ---- the command line ----------------------------------------------------------------------


def test_command_line_checks_every_file_and_fails_on_a_bad_one(tmp_path, capsys, crd_dir):
    assert V.main([]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    doc = _doc(CLUSTER / "kuberay" / "rayjob-generate.yaml")
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc) + "---\n" + RAYSERVICE_FIXTURE)
    assert V.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad} (document 0): spec.shutdownAfterJobFinish: unknown field" in err
    assert "document 1" not in err


# ---- nothing listens on every interface without a key ---------------------------------------


ALL_INTERFACES = "0.0.0.0"


def _walk(value, path=()):
    """(path, string) of every string inside a YAML value; an embedded Serve config
    (`serveConfigV2`) is walked as YAML too."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "serveConfigV2" and isinstance(child, str):
                yield from _walk(yaml.safe_load(child), (*path, key))
            else:
                yield from _walk(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, (*path, index))
    elif isinstance(value, str):
        yield path, value


def _keyed(args: dict) -> bool:
    return bool(args.get("api_key_sha256") or args.get("api_key_sha256_env"))


def _env_from_secret(doc: dict, variable: str) -> bool:
    """Every container of every cluster the resource describes gets `variable` from a Secret."""
    containers = [c for _, spec in V.cluster_specs(doc) for _, group in V.pod_groups(spec)
                  for c in group["template"]["spec"]["containers"]]
    return bool(containers) and all(
        any(e.get("name") == variable and "secretKeyRef" in (e.get("valueFrom") or {})
            for e in c.get("env") or []) for c in containers)


def open_bindings(doc: dict) -> list[str]:
    """Every place a file binds 0.0.0.0 with nothing that asks for a key: a Serve app without
    api_key_sha256(_env) (or whose variable no Secret fills), a Ray dashboard without token auth,
    or a binding no rule here knows."""
    problems = []
    for path, text in _walk(doc):
        if ALL_INTERFACES not in text:
            continue
        where = ".".join(map(str, path))
        if path[-1] == "host" and "http_options" in path:  # a Serve config (serveConfigV2)
            config = yaml.safe_load(doc["spec"]["serveConfigV2"])
            for app in config["applications"]:
                args = app.get("args") or {}
                if not _keyed(args):
                    problems.append(f"{where}: application {app['name']} has no API key")
                elif args.get("api_key_sha256_env") and not _env_from_secret(
                        doc, args["api_key_sha256_env"]):
                    problems.append(f"{where}: {args['api_key_sha256_env']} is not set from a "
                                    "Secret in every container")
        elif path == ("host",):  # a cemiray ServeConfig file
            if not _keyed(doc):
                problems.append(f"{where}: the Serve config has no API key")
        elif path[-1] == "dashboard-host":
            specs = [spec for _, spec in V.cluster_specs(doc)]
            if not specs or any((s.get("authOptions") or {}).get("mode") != "token"
                                for s in specs):
                problems.append(f"{where}: a dashboard on every interface without token auth")
        else:
            problems.append(f"{where}: binds {ALL_INTERFACES} and no rule knows what guards it")
    return problems


CLUSTER_YAML = sorted(CLUSTER.rglob("*.yaml"))


@pytest.mark.parametrize("path", CLUSTER_YAML, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_nothing_binds_every_interface_without_a_key(path):
    for doc in V.load_yaml_documents(path):
        assert open_bindings(doc) == [], path


def test_an_unkeyed_binding_is_found():
    service = _doc(CLUSTER / "kuberay" / "rayservice.yaml")
    serve_cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve_cfg["applications"][0]["args"]["api_key_sha256_env"] = None
    unkeyed = copy.deepcopy(service)
    unkeyed["spec"]["serveConfigV2"] = yaml.safe_dump(serve_cfg)
    assert any("has no API key" in p for p in open_bindings(unkeyed))
    no_secret = copy.deepcopy(service)
    no_secret["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0].pop("env")
    assert any("not set from a Secret" in p for p in open_bindings(no_secret))
    cluster = _doc(CLUSTER / "kuberay" / "raycluster.yaml")
    cluster["spec"].pop("authOptions")
    assert any("without token auth" in p for p in open_bindings(cluster))
    assert open_bindings({"host": ALL_INTERFACES}) == ["host: the Serve config has no API key"]
    launcher = _launcher()
    launcher["head_start_ray_commands"].append("ray start --dashboard-host=0.0.0.0")
    assert any("no rule knows" in p for p in open_bindings(launcher))
