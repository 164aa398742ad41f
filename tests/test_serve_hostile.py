"""Hostile traffic against the served app on loopback, bounded in connections and time: slow
bodies and headers, bodies of many parts or items, many medium images, rate-limited keys and
input echoed into messages. Each must be refused with a clear 4xx while /healthz keeps answering,
and the ingress replica's memory must stay within a stated bound. (Latencies are printed here and
measured by `jobs/bench_serve.py --hostile`; the bounds below only separate "answers" from
"hangs".)"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image
from serve_helpers import API_KEY, b64, face_image, serving

from cemiray.data.images import encode_png

pytestmark = pytest.mark.ray

BODY_TIMEOUT_S = 2.0
SLOW_CLIENTS = 40  # more than the 32 a replica held before: with them all stuck, /healthz hung
HEALTH_BOUND_S = 5.0
RSS_GROWTH_BOUND = 300 * 2**20


@pytest.fixture(scope="module")
def served(ray_cluster):
    """The production request limits (32 images, 4 Mpx per image, 16 MiB bodies, 16 Mpx per
    request), with a short body deadline so the test is quick."""
    with serving(max_images_per_request=32, max_pixels_per_image=2**22,
                 max_body_bytes=16 * 2**20, body_timeout_s=BODY_TIMEOUT_S) as app:
        yield app


@pytest.fixture(scope="module")
def ingress_rss(served):
    """(read RSS of the ingress replica, RSS now): the replica found by its process title."""
    import psutil

    def find() -> psutil.Process:
        for proc in psutil.process_iter(["cmdline"]):
            if "ServeReplica:cemiray:Ingress" in " ".join(proc.info["cmdline"] or []):
                return proc
        raise AssertionError("no ingress replica process found")

    proc = find()
    yield proc.memory_info().rss, lambda: proc.memory_info().rss


def healthz_seconds(served) -> float:
    started = time.perf_counter()
    response = requests.get(served.url("/healthz"), timeout=HEALTH_BOUND_S)
    assert response.status_code == 200, response.text[:300]
    return time.perf_counter() - started


def open_slow(served, what: str) -> socket.socket:
    """A connection that sends the start of a request and then stalls: 10 bytes of a body that
    announces 1 MiB, or half a header block."""
    host, port = served.base_url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    if what == "body":
        sock.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
                     '{"images":'.encode())
    else:
        sock.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: {host}\r\nX-Api".encode())
    return sock


def read_status(sock: socket.socket, seconds: float) -> str:
    """The response's status line, or '' when the server closed the connection without one."""
    sock.settimeout(seconds)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return "timeout"
    return data.split(b"\r\n")[0].decode("latin-1")


def test_slow_bodies_get_408_and_healthz_keeps_answering(served, ingress_rss):
    socks = [open_slow(served, "body") for _ in range(SLOW_CLIENTS)]
    try:
        time.sleep(0.5)  # let every stalled request reach the ingress
        seconds = [healthz_seconds(served) for _ in range(3)]
        print(f"/healthz with {SLOW_CLIENTS} slow bodies open: {max(seconds):.3f} s at most")
        statuses = [read_status(sock, BODY_TIMEOUT_S + 20) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    answered = [s for s in statuses if s]
    assert all(" 408 " in s for s in answered), statuses
    assert len(answered) >= SLOW_CLIENTS // 2, statuses
    healthz_seconds(served)


def test_slow_headers_do_not_take_a_slot(served):
    socks = [open_slow(served, "headers") for _ in range(SLOW_CLIENTS)]
    try:
        time.sleep(0.5)
        seconds = [healthz_seconds(served) for _ in range(3)]
        print(f"/healthz with {SLOW_CLIENTS} half-sent header blocks open: {max(seconds):.3f} s")
        response = requests.post(served.url("/v1/embed"), headers={"X-API-Key": API_KEY},
                                 json={"images": [{"data": b64(encode_png(face_image(1)))}]},
                                 timeout=60)
        assert response.status_code == 200, response.text[:300]
    finally:
        for sock in socks:
            sock.close()


def during_healthz(served, send) -> tuple[requests.Response, list[float]]:
    """Send one hostile request and poll /healthz while it is in flight."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("response", send()))
    thread.start()
    polls = []
    while thread.is_alive() and len(polls) < 20:
        polls.append(healthz_seconds(served))
    thread.join(60)
    assert not thread.is_alive(), "the hostile request got no answer in 60 s"
    return result["response"], polls


def test_a_multipart_body_of_20000_parts_is_refused_by_its_count(served):
    boundary = "cemirayhostile"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nx\r\n")
    body = (part * 20000 + f"--{boundary}--\r\n").encode()
    started = time.perf_counter()
    response, polls = during_healthz(served, lambda: requests.post(
        served.url("/v1/embed"), data=body, timeout=60,
        headers={"X-API-Key": API_KEY,
                 "Content-Type": f"multipart/form-data; boundary={boundary}"}))
    print(f"20,000-part multipart ({len(body)} bytes): {response.status_code} after "
          f"{time.perf_counter() - started:.3f} s; /healthz polls {polls}")
    assert response.status_code == 413, response.text[:300]
    assert "20000 parts" in response.json()["detail"]


def test_a_json_body_of_20000_items_is_refused(served):
    png = b64(encode_png(face_image(2, size=8)))
    body = json.dumps({"images": [{"data": png}] * 20000}).encode()
    started = time.perf_counter()
    response, polls = during_healthz(served, lambda: requests.post(
        served.url("/v1/embed"), data=body, timeout=60,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"}))
    print(f"20,000-item JSON ({len(body)} bytes): {response.status_code} after "
          f"{time.perf_counter() - started:.3f} s; /healthz polls {polls}")
    assert response.status_code == 413, response.text[:300]
    assert "20000 images exceed max_images_per_request=32" in response.json()["detail"]


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_many_medium_images_hit_the_pixel_budget_and_memory_stays_bounded(served, ingress_rss):
    big = b64(flat_png(2048))
    body = {"images": [{"data": big}] * 32}
    response = requests.post(served.url("/v1/embed"), json=body, timeout=60,
                             headers={"X-API-Key": API_KEY})
    print(f"32 x 2048^2 PNGs in {len(json.dumps(body))} bytes: {response.status_code}")
    assert response.status_code == 413, response.text[:300]
    detail = response.json()["detail"]
    assert "max_pixels_per_request=16777216" in detail and str(32 * 2048**2) in detail
    # Within the budget (4 x 2048^2 = 16 Mpx) the same images are served.
    ok = requests.post(served.url("/v1/embed"), json={"images": body["images"][:4]}, timeout=60,
                       headers={"X-API-Key": API_KEY})
    assert ok.status_code == 200, ok.text[:300]
    before, rss = ingress_rss
    growth = rss() - before
    print(f"ingress replica RSS growth over the hostile run: {growth / 2**20:.0f} MiB")
    assert growth < RSS_GROWTH_BOUND, f"ingress RSS grew {growth / 2**20:.0f} MiB"


def test_messages_quote_user_input_escaped_and_truncated(served):
    key = "\u202eevil\x1b[31m" + "k" * 5000
    response = requests.post(
        served.url("/v1/embed"), timeout=60, headers={"X-API-Key": API_KEY},
        json={"images": [{"data": b64(encode_png(face_image(3)))}], key: 1})
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert detail.isascii() and all(c.isprintable() for c in detail), detail
    assert "\\u202e" in detail and len(detail) < 400, detail
    errors = response.json()["errors"]
    assert all(e["loc"].isascii() and len(e["loc"]) < 100 for e in errors), errors


def test_failed_keys_are_rate_limited_per_client(served):
    """Last in this module: once over the limit, this client is refused for a minute."""
    limit = served.cfg.key_failures_per_minute
    statuses = [requests.get(served.url("/v1/models"), headers={"X-API-Key": f"guess{i}"},
                             timeout=60).status_code for i in range(limit + 2)]
    assert statuses[:limit] == [401] * limit and statuses[limit:] == [429, 429], statuses
    refused = requests.get(served.url("/v1/models"), headers={"X-API-Key": API_KEY}, timeout=60)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert requests.get(served.url("/healthz"), timeout=60).status_code == 200
    assert np.isfinite(healthz_seconds(served))
