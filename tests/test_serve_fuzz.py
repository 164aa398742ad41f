"""Fuzzing the served API on loopback, bounded in requests and time: schemathesis generates
requests (valid and invalid) from the OpenAPI schema the server itself serves, and a hypothesis
mutator breaks valid requests (random values at random places, damaged image bytes, NaN and
huge numbers). No request may get a 5xx, and every 4xx must carry a message."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from serve_helpers import EMBED_DIM, OPEN_KEYS, b64, face_image, shared_serving

from cemiray.data.images import encode_jpeg, encode_png

pytestmark = pytest.mark.ray

SCHEMA_REQUESTS, SCHEMA_SECONDS = 100, 35.0
MUTATION_REQUESTS, MUTATION_SECONDS = 50, 25.0
TIMEOUT = 60


@pytest.fixture(scope="module")
def served(ray_cluster):
    return shared_serving(**OPEN_KEYS)  # started by test_serve.py when it ran first


class Budget:
    """At most `requests` requests and `seconds` of wall time; beyond it, examples are no-ops."""

    def __init__(self, requests_: int, seconds: float):
        self.left, self.deadline, self.sent = requests_, time.monotonic() + seconds, 0
        self.statuses: Counter[int] = Counter()

    def take(self) -> bool:
        if self.left <= 0 or time.monotonic() > self.deadline:
            return False
        self.left, self.sent = self.left - 1, self.sent + 1
        return True


def check_response(response: requests.Response, what: str, budget: Budget) -> None:
    budget.statuses[response.status_code] += 1
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail, f"{what}: 4xx without a message"


BOUNDED = settings(deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                   suppress_health_check=list(HealthCheck))


def fuzz_operation(served, operation, mode, examples: int, budget: Budget,
                   session: requests.Session) -> None:
    """Send up to `examples` schemathesis cases of one operation (valid or invalid ones)."""

    @settings(BOUNDED, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        if not budget.take():
            return
        response = case.call(base_url=served.base_url, session=session, headers=served.headers,
                             timeout=TIMEOUT)
        check_response(response, f"{mode.value} {case.as_curl_command()[:400]}", budget)

    fuzz()


def test_schema_generated_requests_get_no_server_error(served):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(served.url("/openapi.json"), timeout=TIMEOUT)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} == {
        ("POST", "/v1/embed"), ("POST", "/v1/verify"), ("POST", "/v1/generate"),
        ("GET", "/v1/models"), ("GET", "/healthz")}
    budget, session = Budget(SCHEMA_REQUESTS, SCHEMA_SECONDS), requests.Session()
    runs = [(op, mode) for op in operations for mode in GenerationMode
            if mode is GenerationMode.POSITIVE or list(op.body)]
    for op, mode in runs:
        fuzz_operation(served, op, mode, SCHEMA_REQUESTS // len(runs) + 1, budget, session)
    print(f"schema fuzz: {budget.sent} requests, statuses {dict(budget.statuses)}")
    assert budget.sent >= 40, f"only {budget.sent} requests were sent"
    assert requests.get(served.url("/healthz"), timeout=TIMEOUT).status_code == 200


PNG, JPEG = encode_png(face_image(5)), encode_jpeg(face_image(6))
VALID = {
    "/v1/embed": {"images": [{"data": b64(PNG)}, {"data": b64(JPEG), "landmarks": [
        [15.0, 18.0], [33.0, 18.0], [24.0, 27.0], [17.0, 36.0], [31.0, 36.0]]}]},
    "/v1/verify": {"image_a": {"data": b64(PNG)}, "image_b": {"data": b64(JPEG)}},
    "/v1/generate": {"embedding": [0.1] * EMBED_DIM, "m": [0.0, 0.5], "images_per_m": 1,
                     "seed": 3, "steps": 2, "scheduler": "ddim",
                     "closed_loop": {"tolerance": 0.1, "max_tries": 2}},
}
ODD_NUMBERS = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, -0.0, 2**64,
               -(2**63), 2**31, 1.0000001, -1.0000001]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(ODD_NUMBERS)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)


def paths(value, prefix=()):
    """Every place inside a JSON value, as a tuple of keys and indices."""
    yield prefix
    items = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield from paths(child, prefix + (key,))


def replace(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replace(copy[path[0]], path[1:], new)
    return copy


def drop(value, path):
    copy = dict(value) if isinstance(value, dict) else list(value)
    if len(path) == 1:
        del copy[path[0]]
    else:
        copy[path[0]] = drop(copy[path[0]], path[1:])
    return copy


@st.composite
def damaged_image(draw) -> str:
    data = bytearray(draw(st.sampled_from([PNG, JPEG])))
    how = draw(st.sampled_from(["truncate", "flip", "prefix"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    else:
        data = bytearray(draw(st.binary(min_size=1, max_size=16))) + data
    return base64.b64encode(bytes(data)).decode("ascii")


@st.composite
def mutated_body(draw, valid: dict) -> str:
    """A valid body with one or two things broken: a number made odd (NaN, inf, huge, ...), a
    random JSON value put anywhere, an image's bytes damaged, or a key or item dropped."""
    body = valid
    for _ in range(draw(st.integers(1, 2))):
        places = list(paths(body))
        leaves = [p for p in places if p and not isinstance(lookup(body, p), (dict, list))]
        images = [p for p in places if p and p[-1] == "data"]
        action = draw(st.sampled_from(["number", "number", "value", "image", "drop"]))
        if action == "number" and leaves:
            number = st.sampled_from(ODD_NUMBERS) | st.floats()
            body = replace(body, draw(st.sampled_from(leaves)), draw(number))
        elif action == "image" and images:
            body = replace(body, draw(st.sampled_from(images)), draw(damaged_image()))
        elif action == "drop" and len(places) > 1:
            body = drop(body, draw(st.sampled_from(places[1:])))
        else:
            body = replace(body, draw(st.sampled_from(places)), draw(JSON_VALUES))
    return json.dumps(body, allow_nan=True)


def lookup(value, path):
    for key in path:
        value = value[key]
    return value


@pytest.mark.parametrize("path", sorted(VALID))
def test_mutated_valid_requests_get_no_server_error(served, path):
    examples = MUTATION_REQUESTS // len(VALID)
    session = requests.Session()
    headers = served.headers | {"Content-Type": "application/json"}
    response = session.post(served.url(path), data=json.dumps(VALID[path]), headers=headers,
                            timeout=TIMEOUT)
    assert response.status_code == 200, f"{path}: {response.text[:300]}"
    # The clock starts after the first (valid) request, which a loaded machine can make slow.
    budget = Budget(examples, MUTATION_SECONDS / len(VALID))

    @settings(BOUNDED, max_examples=examples)
    @given(text=mutated_body(VALID[path]))
    def fuzz(text):
        if not budget.take():
            return
        response = session.post(served.url(path), data=text.encode(), headers=headers,
                                timeout=TIMEOUT)
        check_response(response, f"POST {path} {text[:300]}", budget)

    fuzz()
    print(f"mutation fuzz {path}: {budget.sent} requests, statuses {dict(budget.statuses)}")
    assert budget.sent >= examples // 2, f"only {budget.sent} requests were sent"
    assert requests.get(served.url("/healthz"), timeout=TIMEOUT).status_code == 200
