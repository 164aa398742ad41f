"""The Serve application over real HTTP on loopback: every endpoint's happy path checked against
the same models run locally, the bad-input matrix (each answered 4xx with a message naming the
field or item), the production Serve config, and p50 latencies."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from pydantic import ValidationError
from serve_helpers import EMBED_DIM, OPEN_KEYS, b64, face_image, shared_serving

from cemiray.data.images import decode_image, encode_jpeg, encode_png
from cemiray.serve import ServeConfig, serve_config, write_serve_config

pytestmark = pytest.mark.ray

TIMEOUT = 60
LANDMARKS = [[15.0, 18.0], [33.0, 18.0], [24.0, 27.0], [17.0, 36.0], [31.0, 36.0]]


@pytest.fixture(scope="module")
def served(ray_cluster):
    return shared_serving(**OPEN_KEYS)


@pytest.fixture(scope="module")
def local(served):
    """The recogniser the server loads, loaded here too, to check the served numbers."""
    from cemiray.models.recognizer import load_recognizer

    return load_recognizer(served.recognizer_url)


def folder_sha256(folder: str) -> str:
    """The model hash as documented (cemiray.models.hashing), computed here independently: the
    SHA-256 of `sha256sum`'s lines for every file, in order of relative path."""
    files = {p.relative_to(folder).as_posix(): p for p in Path(folder).rglob("*") if p.is_file()}
    assert len(files) >= 2 and "MODEL_CARD.md" not in files
    lines = "".join(f"{hashlib.sha256(files[rel].read_bytes()).hexdigest()}  {rel}\n"
                    for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def post(served, path: str, headers: dict | None = None, **kw) -> requests.Response:
    return requests.post(served.url(path), headers=served.headers if headers is None else headers,
                         timeout=TIMEOUT, **kw)


def ok_json(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text[:500]
    return response.json()


PNG1, PNG3 = encode_png(face_image(1)), encode_png(face_image(3))
JPEG2 = encode_jpeg(face_image(2, size=40))


# ---- happy paths ---------------------------------------------------------------------------------


def test_health_models_and_openapi(served):
    assert ok_json(requests.get(served.url("/healthz"), timeout=TIMEOUT))["status"] == "ok"
    info = ok_json(requests.get(served.url("/v1/models"), headers=served.headers,
                                timeout=TIMEOUT))
    assert info["recognizer"]["content_hash"] == folder_sha256(served.recognizer_url)
    assert info["recognizer"]["details"]["dim"] == EMBED_DIM
    assert info["generator"]["content_hash"] == folder_sha256(served.generator_url)
    assert info["limits"]["max_images_per_request"] == served.cfg.max_images_per_request

    schema = ok_json(requests.get(served.url("/openapi.json"), timeout=TIMEOUT))
    paths = schema["paths"]
    assert set(paths) == {"/v1/embed", "/v1/verify", "/v1/generate", "/v1/models", "/healthz"}
    assert set(paths["/v1/embed"]["post"]["requestBody"]["content"]) == {
        "application/json", "multipart/form-data"}
    m_items = schema["components"]["schemas"]["GenerateRequest"]["properties"]["m"]["items"]
    assert (m_items["minimum"], m_items["maximum"]) == (-1.0, 1.0)
    assert schema["components"]["securitySchemes"]["APIKey"]["name"] == "X-API-Key"


def test_embed_json_matches_the_recogniser_run_locally(served, local):
    from cemiray.models.recognizer import align_face

    body = {"images": [{"data": b64(PNG1)}, {"data": b64(JPEG2)},
                       {"data": b64(PNG3), "landmarks": LANDMARKS}]}
    out = ok_json(post(served, "/v1/embed", json=body))
    got = np.asarray(out["embeddings"])
    assert got.shape == (3, EMBED_DIM) and out["dim"] == EMBED_DIM
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    aligned = align_face(decode_image(PNG3), np.asarray(LANDMARKS), 112)
    expected = [local.embed(im[None])[0] for im in (decode_image(PNG1), decode_image(JPEG2),
                                                     aligned)]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    assert out["recognizer_hash"] == folder_sha256(served.recognizer_url)

    eight = {"images": [{"data": b64(encode_png(face_image(s)))} for s in range(8)]}
    assert len(ok_json(post(served, "/v1/embed", json=eight))["embeddings"]) == 8
    info = ok_json(requests.get(served.url("/v1/models"), headers=served.headers,
                                timeout=TIMEOUT))
    assert info["recognizer"]["details"]["largest_batch"] > 1, "the images were not batched"


def test_embed_multipart_equals_json(served):
    files = [("images", ("a.png", PNG1, "image/png")), ("images", ("b.jpg", JPEG2, "image/jpeg")),
             ("images", ("c.png", PNG3, "image/png"))]
    multipart = ok_json(post(served, "/v1/embed", files=files,
                             data={"landmarks": json.dumps([None, None, LANDMARKS])}))
    body = {"images": [{"data": b64(PNG1)}, {"data": b64(JPEG2)},
                       {"data": b64(PNG3), "landmarks": LANDMARKS}]}
    as_json = ok_json(post(served, "/v1/embed", json=body))
    # the two requests may be batched differently by the dynamic batcher: CPU kernels round by batch size
    np.testing.assert_allclose(multipart["embeddings"], as_json["embeddings"], atol=1e-5)


def test_verify_scores_and_decides(served, local):
    same = ok_json(post(served, "/v1/verify", json={"image_a": {"data": b64(PNG1)},
                                                    "image_b": {"data": b64(PNG1)}}))
    assert same["similarity"] == pytest.approx(1.0, abs=1e-5) and same["same_identity"]
    pair = ok_json(post(served, "/v1/verify", json={"image_a": {"data": b64(PNG1)},
                                                    "image_b": {"data": b64(JPEG2)}}))
    a, b = local.embed(decode_image(PNG1)[None])[0], local.embed(decode_image(JPEG2)[None])[0]
    assert pair["similarity"] == pytest.approx(float(a @ b), abs=1e-5)
    assert pair["threshold"] == served.cfg.verify_threshold
    assert pair["same_identity"] == (pair["similarity"] >= served.cfg.verify_threshold)


def decoded(item: dict) -> np.ndarray:
    import base64

    return decode_image(base64.b64decode(item["png_base64"]))


def test_generate_reports_the_similarity_the_recogniser_measures(served, local):
    identity = np.random.default_rng(0).normal(size=EMBED_DIM)
    body = {"embedding": identity.tolist(), "m": [-0.5, 0.5], "images_per_m": 2, "seed": 7}
    out = ok_json(post(served, "/v1/generate", json=body))
    assert [(i["m"], i["seed"], i["tries"]) for i in out["images"]] == [
        (-0.5, 7, 1), (-0.5, 8, 1), (0.5, 9, 1), (0.5, 10, 1)]
    assert out["steps"] == served.cfg.default_steps
    assert out["generator_hash"] == folder_sha256(served.generator_url)
    assert out["recognizer_hash"] == folder_sha256(served.recognizer_url)
    unit = identity / np.linalg.norm(identity)
    for item in out["images"]:
        pixels = decoded(item)
        assert pixels.shape == (32, 32, 3)
        measured = float(local.embed(pixels[None])[0] @ unit)
        assert item["similarity"] == pytest.approx(measured, abs=0.05)
    again = ok_json(post(served, "/v1/generate", json=body))
    for first, second in zip(out["images"], again["images"]):
        assert np.abs(decoded(first).astype(int) - decoded(second)).max() <= 1


def test_generate_from_an_inquiry_image_and_in_closed_loop(served, local):
    from_image = ok_json(post(served, "/v1/generate", json={
        "image": {"data": b64(PNG1)}, "m": [0.3], "steps": 3, "scheduler": "euler"}))
    embedding = local.embed(decode_image(PNG1)[None])[0].tolist()
    from_embedding = ok_json(post(served, "/v1/generate", json={
        "embedding": embedding, "m": [0.3], "steps": 3, "scheduler": "euler"}))
    assert np.abs(decoded(from_image["images"][0]).astype(int)
                  - decoded(from_embedding["images"][0])).max() <= 1
    assert from_image["scheduler"] == "euler" and from_image["steps"] == 3

    loose = ok_json(post(served, "/v1/generate", json={
        "embedding": embedding, "m": [0.0, 0.9], "closed_loop": {"tolerance": 2.0,
                                                                 "max_tries": 3}}))
    assert all(i["tries"] == 1 and i["within_tolerance"] for i in loose["images"])
    strict = ok_json(post(served, "/v1/generate", json={
        "embedding": embedding, "m": [0.0, 0.9], "closed_loop": {"tolerance": 0.0,
                                                                 "max_tries": 2}}))
    assert all(i["tries"] == 2 and not i["within_tolerance"] for i in strict["images"])
    assert all(i["seed"] in (k, k + 1_000_003) for k, i in enumerate(strict["images"]))

    body = {"embedding": embedding, "m": [0.9], "steps": 3, "seed": 4}
    plain = ok_json(post(served, "/v1/generate", json=body))["images"][0]
    guided = ok_json(post(served, "/v1/generate", json={**body, "guidance_scale": 3.0,
                                                        "guidance_m": 0.0}))["images"][0]
    assert guided["seed"] == plain["seed"] == 4
    assert np.abs(decoded(guided).astype(int) - decoded(plain)).max() > 1


def test_generate_with_a_variation_plan_records_requested_and_measured(served):
    """Each variation is made for every m and image k (from seed + k); the response records
    what was requested and what the server's independent estimator reads; a request the
    generator cannot honour is a 422 naming the field."""
    body = {"embedding": [1.0] * EMBED_DIM, "m": [0.5], "images_per_m": 2, "seed": 3,
            "variation": [{"glasses": True, "yaw": 20.0}, None, {}]}
    out = ok_json(post(served, "/v1/generate", json=body))["images"]
    assert [(i["seed"], i["variation"]) for i in out] == [
        (3, {"glasses": 1.0, "yaw": 20.0}), (4, {"glasses": 1.0, "yaw": 20.0}),
        (3, None), (4, None), (3, None), (4, None)]
    for item in out:
        assert set(item["variation_measured"]) == {"yaw", "glasses"}
        assert item["variation_measured"]["glasses"] in (0, 1)
    assert np.abs(decoded(out[0]).astype(int) - decoded(out[2])).max() > 1  # same seed
    assert np.abs(decoded(out[2]).astype(int) - decoded(out[4])).max() <= 1  # null == {}
    info = ok_json(requests.get(served.url("/v1/models"), headers=served.headers,
                                timeout=TIMEOUT))["generator"]["details"]
    assert [a["name"] for a in info["variation"]["attributes"]] == ["yaw", "glasses"]
    for variation, field in (([{"tilt": 1.0}], "variation\\[0\\].tilt: unknown"),
                             ([None, {"yaw": 90.0}], "variation\\[1\\].yaw: 90.0 lies outside"),
                             ([{"glasses": 0.5}], "variation\\[0\\].glasses: a binary"),
                             ([{"yaw": "left"}], "variation"),
                             ([], "variation"), ({"yaw": 1.0}, "variation")):
        response = post(served, "/v1/generate", json={**body, "variation": variation})
        assert response.status_code == 422, (variation, response.text)
        assert re.search(field, response.json()["detail"]), response.json()["detail"]
    too_many = post(served, "/v1/generate", json={**body, "images_per_m": 4,
                                                   "variation": [None] * 3})
    assert too_many.status_code == 413 and "len(variation)=3" in too_many.json()["detail"]


# ---- the bad-input matrix ------------------------------------------------------------------------


def raw_json(text: str) -> dict:
    return {"data": text.encode(), "headers_extra": {"Content-Type": "application/json"}}


def gen_body(**fields) -> dict:
    return {"json": {"embedding": [1.0] * EMBED_DIM, "m": [0.0], **fields}}


def chunks_of(total: int, size: int = 2**20):
    for _ in range(total // size):
        yield b" " * size


BIG = 50 * 2**20
TRUNCATED = PNG1[: len(PNG1) // 2]
CASES = [
    # (id, path, request kwargs, status, message fragment)
    ("not-an-image", "/v1/embed", {"json": {"images": [{"data": b64(b"hello world")}]}},
     422, "images[0]: not a PNG or JPEG image"),
    ("truncated-png", "/v1/embed", {"json": {"images": [{"data": b64(PNG1)},
                                                         {"data": b64(TRUNCATED)}]}},
     422, "images[1]: not a complete image"),
    ("bad-base64", "/v1/embed", {"json": {"images": [{"data": "@@not base64@@"}]}},
     422, "images[0].data: not valid base64"),
    ("too-many-pixels", "/v1/embed", {"json": {"images": [
        {"data": b64(encode_png(np.zeros((200, 200, 3), np.uint8)))}]}},
     413, "max_pixels_per_image=16384"),
    ("too-many-images", "/v1/embed", {"json": {"images": [{"data": b64(PNG1)}] * 9}},
     413, "9 images exceed max_images_per_request=8"),
    ("50MB-body", "/v1/embed", {"data": "big",
                                "headers_extra": {"Content-Type": "application/json"}},
     413, "Content-Length 52428800 exceeds max_body_bytes"),
    ("50MB-chunked-body", "/v1/embed", {"data": "chunks",
                                        "headers_extra": {"Content-Type": "application/json"}},
     413, "request body exceeds max_body_bytes"),
    ("invalid-json", "/v1/embed", raw_json('{"images": ['), 422, "Invalid JSON"),
    ("json-array-body", "/v1/embed", raw_json("[]"), 422, "<body>: Input should be an object"),
    ("missing-images", "/v1/embed", {"json": {}}, 422, "images: Field required"),
    ("images-wrong-type", "/v1/embed", {"json": {"images": "abc"}}, 422, "images: "),
    ("data-wrong-type", "/v1/embed", {"json": {"images": [{"data": 123}]}},
     422, "images[0].data: Input should be a valid string"),
    ("landmarks-outside", "/v1/embed", {"json": {"images": [
        {"data": b64(PNG1), "landmarks": [[500.0, 1.0]] * 5}]}},
     422, "images[0].landmarks: every point must lie inside"),
    ("landmarks-coincide", "/v1/embed", {"json": {"images": [
        {"data": b64(PNG1), "landmarks": [[9.0, 9.0]] * 5}]}},
     422, "images[0].landmarks: the 5 points coincide"),
    ("landmarks-four", "/v1/embed", {"json": {"images": [
        {"data": b64(PNG1), "landmarks": LANDMARKS[:4]}]}}, 422, "images[0].landmarks"),
    ("path-smuggling", "/v1/embed", {"json": {"images": [{"data": b64(PNG1)}],
                                              "recognizer": "/etc/passwd"}},
     422, "recognizer: Extra inputs are not permitted"),
    ("text-plain", "/v1/embed", {"data": b"hello", "headers_extra": {"Content-Type": "text/plain"}},
     415, "'text/plain' is not supported"),
    ("multipart-unknown-field", "/v1/embed", {"files": [("path", ("x", b"/etc/passwd"))]},
     422, "unexpected field 'path'"),
    ("multipart-not-image", "/v1/embed", {"files": [("images", ("x.png", b"nope"))]},
     422, "images[0]: not a PNG or JPEG image"),
    ("missing-api-key", "/v1/embed", {"json": {"images": [{"data": b64(PNG1)}]}, "headers": {}},
     401, "missing X-API-Key"),
    ("wrong-api-key", "/v1/embed", {"json": {"images": [{"data": b64(PNG1)}]},
                                    "headers": {"X-API-Key": "guess"}}, 401, "wrong API key"),
    ("m-NaN", "/v1/generate", raw_json('{"embedding": [1.0], "m": [NaN]}'), 422, "m[0]"),
    ("m-Infinity", "/v1/generate", raw_json('{"embedding": [1.0], "m": [Infinity]}'), 422,
     "m[0]: Input should be a finite number"),
    ("m-minus-Infinity", "/v1/generate", raw_json('{"embedding": [1.0], "m": [-Infinity]}'), 422,
     "m[0]: Input should be a finite number"),
    ("m-1e400", "/v1/generate", raw_json('{"embedding": [1.0], "m": [1e400]}'), 422, "m[0]"),
    ("m-1.5", "/v1/generate", gen_body(m=[0.2, 1.5]), 422,
     "m[1]: Input should be less than or equal to 1"),
    ("m-string", "/v1/generate", gen_body(m=["0.5"]), 422, "m[0]: Input should be a valid number"),
    ("m-empty", "/v1/generate", gen_body(m=[]), 422, "m: List should have at least 1 item"),
    ("missing-m", "/v1/generate", {"json": {"embedding": [1.0]}}, 422, "m: Field required"),
    ("n-too-large", "/v1/generate", gen_body(m=[0.1, 0.2, 0.3], images_per_m=3), 413,
     "9 images exceed max_images_per_request=8"),
    ("steps-over-max", "/v1/generate", gen_body(steps=9), 422, "steps=9 exceeds max_steps=8"),
    ("work-over-limit", "/v1/generate", gen_body(m=[0.0] * 8, steps=8, closed_loop={
        "tolerance": 0.1, "max_tries": 2}), 422, "= 128 exceeds max_image_steps=64"),
    ("guided-work-over-limit", "/v1/generate", gen_body(m=[0.0] * 8, steps=8,
                                                        guidance_scale=2.0), 422,
     "x 2 UNet passes = 128 exceeds max_image_steps=64"),
    ("guidance-negative", "/v1/generate", gen_body(guidance_scale=-1.0), 422, "guidance_scale: "),
    ("guidance-m-over", "/v1/generate", gen_body(guidance_m=1.5), 422, "guidance_m: "),
    ("max-tries-over", "/v1/generate", gen_body(closed_loop={"max_tries": 5}), 422,
     "closed_loop.max_tries=5 exceeds max_tries=3"),
    ("tolerance-negative", "/v1/generate", gen_body(closed_loop={"tolerance": -1.0}), 422,
     "closed_loop.tolerance"),
    ("both-identities", "/v1/generate", gen_body(image={"data": b64(PNG1)}), 422,
     "exactly one of 'image' or 'embedding'"),
    ("no-identity", "/v1/generate", {"json": {"m": [0.0]}}, 422, "exactly one"),
    ("embedding-wrong-dim", "/v1/generate", gen_body(embedding=[1.0, 2.0, 3.0]), 422,
     "embedding: 3 values; the recogniser's embeddings have 32"),
    ("embedding-zero", "/v1/generate", gen_body(embedding=[0.0] * EMBED_DIM), 422, "all zeros"),
    ("embedding-NaN", "/v1/generate", raw_json('{"embedding": [NaN], "m": [0.0]}'), 422,
     "embedding[0]: Input should be a finite number"),
    ("unknown-scheduler", "/v1/generate", gen_body(scheduler="karras"), 422, "scheduler: "),
    ("seed-negative", "/v1/generate", gen_body(seed=-1), 422, "seed: "),
    ("seed-float", "/v1/generate", gen_body(seed=1.5), 422, "seed: Input should be a valid integer"),
    ("images-per-m-string", "/v1/generate", gen_body(images_per_m="2"), 422, "images_per_m: "),
    ("generate-bad-image", "/v1/generate", gen_body(embedding=None, image={
        "data": b64(TRUNCATED)}), 422, "image: not a complete image"),
    ("verify-missing-b", "/v1/verify", {"json": {"image_a": {"data": b64(PNG1)}}}, 422,
     "image_b: Field required"),
    ("verify-truncated-b", "/v1/verify", {"json": {"image_a": {"data": b64(PNG1)},
                                                   "image_b": {"data": b64(TRUNCATED)}}},
     422, "image_b: not a complete image"),
]


@pytest.mark.parametrize("path, kw, status, fragment", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_4xx(served, path, kw, status, fragment):
    kw = dict(kw)
    headers = dict(kw.pop("headers", served.headers)) | kw.pop("headers_extra", {})
    if kw.get("data") == "big":
        kw["data"] = b" " * BIG
    elif kw.get("data") == "chunks":
        kw["data"] = chunks_of(BIG)
    response = post(served, path, headers=headers, **kw)
    assert response.status_code == status, response.text[:500]
    detail = response.json()["detail"]
    assert fragment in detail, detail


def test_other_routes_refuse_without_the_key_and_stay_healthy(served):
    models = requests.get(served.url("/v1/models"), headers={"X-API-Key": "x"}, timeout=TIMEOUT)
    assert models.status_code == 401
    assert requests.get(served.url("/v1/nothing"), headers=served.headers,
                        timeout=TIMEOUT).status_code == 404
    health = requests.get(served.url("/healthz"), timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ok_json(post(served, "/v1/embed", json={"images": [{"data": b64(PNG1)}]}))


# ---- repeated calls ------------------------------------------------------------------------------


def test_every_route_answers_repeatedly(served, record_property):
    """12 calls per route all succeed; their p50 is recorded for the log, not asserted (speed is
    measured by `jobs/bench_serve.py`, a benchmark, not by a test on a shared machine)."""
    single = {"images": [{"data": b64(PNG1)}]}
    calls = {
        "healthz": lambda: requests.get(served.url("/healthz"), timeout=TIMEOUT),
        "embed": lambda: post(served, "/v1/embed", json=single),
        "verify": lambda: post(served, "/v1/verify", json={"image_a": {"data": b64(PNG1)},
                                                           "image_b": {"data": b64(PNG3)}}),
        "generate_1x2steps": lambda: post(served, "/v1/generate", json={
            "embedding": [1.0] * EMBED_DIM, "m": [0.5], "steps": 2}),
    }
    p50 = {}
    for name, call in calls.items():
        times = []
        for _ in range(12):
            start = time.perf_counter()
            assert call().status_code == 200
            times.append(time.perf_counter() - start)
        p50[name] = statistics.median(times) * 1000
        record_property(f"p50_ms_{name}", round(p50[name], 1))
    print("p50 ms:", {k: round(v, 1) for k, v in p50.items()})


# ---- config and the production Serve file ---------------------------------------------------------


def test_serve_config_file_is_a_valid_serve_deploy_config(tmp_path, monkeypatch):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.setenv("CEMIRAY_TEST_KEY_SHA256", hashlib.sha256(b"k").hexdigest())
    cfg = ServeConfig(recognizer="s3://bucket/rec", generator="s3://bucket/gen", use_gpu=True,
                      port=8000, host="0.0.0.0", max_batch_size=24,
                      api_key_sha256_env="CEMIRAY_TEST_KEY_SHA256",
                      recognizer_scaling={"max_replicas": 4, "max_ongoing_requests": 48},
                      generator_scaling={"max_ongoing_requests": 24})
    doc = serve_config(cfg)
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    assert doc["http_options"] == {"host": "0.0.0.0", "port": 8000}
    module, attr = app["import_path"].split(":")
    built = getattr(importlib.import_module(module), attr)(app["args"])
    assert isinstance(built, serve.Application)
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "Recognizer", "Generator"}
    assert deployments["Recognizer"]["autoscaling_config"]["max_replicas"] == 4
    assert deployments["Generator"]["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 1.0}
    assert "num_gpus" not in deployments["Ingress"]["ray_actor_options"]
    assert ServeConfig(**app["args"]).max_batch_size == 24

    url = write_serve_config(cfg, str(tmp_path / "serve.yaml"))
    assert yaml.safe_load(Path(url).read_text()) == doc

    monkeypatch.delenv("CEMIRAY_TEST_KEY_SHA256")
    with pytest.raises(ValueError, match="CEMIRAY_TEST_KEY_SHA256: the environment variable is "
                                         "not set here"):
        getattr(importlib.import_module(module), attr)(app["args"])


@pytest.mark.parametrize("overrides, fragment", [
    ({"recognizer_scaling": {"max_ongoing_requests": 4}}, "batches would be capped"),
    ({"api_key_sha256": "secret"}, "api_key_sha256 must be 64"),
    ({"default_steps": 60}, "default_steps=60 > max_steps=50"),
    ({"align_size": 100}, "align_size=100"),
    ({"host": "0.0.0.0"}, "host=0.0.0.0 serves off this machine without an API key"),
    ({"api_key_sha256": "0" * 64, "api_key_sha256_env": "K"}, "not both"),
])
def test_config_refuses_inconsistent_settings(overrides, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ServeConfig(recognizer="x", **overrides)


def test_request_schedulers_are_the_pipeline_schedulers():
    from cemiray.diffusion.pipeline import SCHEDULERS
    from cemiray.serve.schemas import SCHEDULER_NAMES

    assert set(SCHEDULER_NAMES) == set(SCHEDULERS)


def test_no_request_field_names_a_file_or_url():
    from cemiray.serve.schemas import REQUEST_MODELS

    def names(model) -> set[str]:
        found = set(model.model_fields)
        for field in model.model_fields.values():
            for arg in getattr(field.annotation, "__args__", ()) + (field.annotation,):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    found |= names(arg)
        return found

    fields = set().union(*(names(m) for m in REQUEST_MODELS))
    assert not {f for f in fields if any(w in f for w in ("path", "url", "uri", "file"))}, fields
