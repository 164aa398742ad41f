"""Hostile traffic figures of `cemiray bench-serve` (bench): what slow and oversized requests cost.

1. Slow clients: N connections each send a request's headers and 10 bytes of a body that
   announces 1 MiB, then stall; with them open, the latency of /healthz (5 probes), and how many
   of them the server answered 408 once `body_timeout_s` passed. Swept over N, so the number of
   stalled clients a replica holds before /healthz degrades is read off the table.
2. Oversized requests: a 20,000-part multipart body, a 20,000-item JSON body and 32 flat
   2048² PNGs in one request: status, seconds to the answer, and /healthz while each is in flight.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from typing import Any

import numpy as np

HEALTH_BOUND_S = 1.0


def healthz_ms(base_url: str, probes: int = 5) -> list[float]:
    """Latency of each probe in ms (inf when it got no 200 within 30 s)."""
    import requests

    out = []
    for _ in range(probes):
        t0 = time.perf_counter()
        try:
            ok = requests.get(f"{base_url}/healthz", timeout=30).status_code == 200
        except requests.RequestException:
            ok = False
        out.append((time.perf_counter() - t0) * 1e3 if ok else float("inf"))
    return out


def stalled_connection(base_url: str, key: str) -> socket.socket:
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
                 '{"images":'.encode())
    return sock


def answered_408(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return b" 408 " in sock.recv(4096).split(b"\r\n")[0]
    except OSError:
        return False


def slow_clients(base_url: str, key: str, counts: list[int], body_timeout_s: float
                 ) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        socks = [stalled_connection(base_url, key) for _ in range(n)]
        try:
            time.sleep(0.5)
            probes = healthz_ms(base_url)
            got_408 = sum(answered_408(s, body_timeout_s + 30) for s in socks)
        finally:
            for sock in socks:
                sock.close()
        finite = [p for p in probes if np.isfinite(p)]
        rows.append({"slow_clients": n, "healthz_ms_max": max(probes),
                     "healthz_ms_median": float(np.median(probes)),
                     "healthz_within_1s": bool(len(finite) == len(probes)
                                               and max(finite) <= HEALTH_BOUND_S * 1e3),
                     "answered_408": got_408})
        print(f"bench-serve: {n} slow clients: /healthz max {max(probes):.0f} ms, "
              f"{got_408}/{n} answered 408", flush=True)
        time.sleep(1.0)
    return rows


def flat_png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def oversized_bodies(images: int) -> dict[str, tuple[bytes, str]]:
    import base64

    from cemiray.data.images import encode_png

    boundary = "cemiraybench"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
            "filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nx\r\n")
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    small = base64.b64encode(encode_png(pixels)).decode()
    big = base64.b64encode(flat_png(2048)).decode()
    return {
        "multipart_20000_parts": ((part * 20000 + f"--{boundary}--\r\n").encode(),
                                  f"multipart/form-data; boundary={boundary}"),
        "json_20000_items": (json.dumps({"images": [{"data": small}] * 20000}).encode(),
                             "application/json"),
        f"png_2048sq_x{images}": (json.dumps({"images": [{"data": big}] * images}).encode(),
                                  "application/json"),
    }


def oversized(base_url: str, key: str, images: int) -> dict[str, dict[str, Any]]:
    import requests

    out = {}
    for name, (body, content_type) in oversized_bodies(images).items():
        result: dict = {}

        def send(body=body, content_type=content_type, result=result) -> None:
            t0 = time.perf_counter()
            reply = requests.post(f"{base_url}/v1/embed", data=body, timeout=120, headers={
                "X-API-Key": key, "Content-Type": content_type})
            result.update(status=reply.status_code, seconds=time.perf_counter() - t0,
                          detail=reply.json().get("detail", "")[:160])

        thread = threading.Thread(target=send)
        thread.start()
        during = []
        while thread.is_alive() and len(during) < 10:
            during += healthz_ms(base_url, 1)
        thread.join()
        out[name] = {**result, "body_bytes": len(body), "healthz_ms_during": during}
        print(f"bench-serve: {name} ({len(body)} bytes): {result['status']} in "
              f"{result['seconds']:.3f} s", flush=True)
    return out


def hostile_figures(base_url: str, key: str, counts: list[int], body_timeout_s: float,
                    images: int) -> dict[str, Any]:
    return {"slow_clients": slow_clients(base_url, key, counts, body_timeout_s),
            "oversized": oversized(base_url, key, images), "body_timeout_s": body_timeout_s}
