"""Headless Chromium for the report (apps): a screenshot and the page's count of decoded images.

Open a report in headless Chromium: a screenshot to look at, and the page's own count of the
images that decoded, so a test can prove the report renders rather than only that files exist."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from cemiray.data import storage

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


class ChromiumError(RuntimeError):
    """Chromium is missing, failed, timed out, or the page did not report its images."""


def _page_uri(html_path: str) -> str:
    if html_path.startswith("file://"):
        path = Path(html_path[len("file://"):])
    elif "://" in html_path:
        raise ValueError(f"{html_path}: Chromium can only open a local file")
    else:
        path = Path(html_path)
    if not path.is_file():
        raise FileNotFoundError(f"{html_path}: no such HTML file")
    return path.resolve().as_uri()


def _run(chromium: str, args: list[str], timeout_s: float) -> str:
    """Run Chromium with a fresh profile; return its stdout. On a timeout the process group it
    started (and only that) is killed."""
    with tempfile.TemporaryDirectory(prefix="cemiray-chromium-") as profile:
        command = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise ChromiumError(f"{chromium} timed out after {timeout_s:g} s: "
                                f"{' '.join(args)}") from exc
    if process.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise ChromiumError(f"{chromium} exited with {process.returncode}: {' '.join(args)}\n"
                            f"{tail}")
    return stdout


def _body_count(dom: str, attribute: str, html_path: str) -> int:
    body = re.search(r"<body\b[^>]*>", dom)
    found = re.search(rf'\b{attribute}="(\d+)"', body.group(0)) if body else None
    if found is None:
        raise ChromiumError(f"{html_path}: <body> has no {attribute} after loading; the page's "
                            "image-check script did not run")
    return int(found.group(1))


def render_in_chromium(html_path: str, screenshot_png: str, timeout_s: float = 60,
                       window_size: tuple[int, int] = (1280, 1600),
                       virtual_time_ms: int = 10_000, chromium: str = CHROMIUM) -> dict:
    """Screenshot the page into `screenshot_png` (any storage URL) and read back how many of its
    images loaded. Returns {"images_total", "images_loaded", "screenshot", "bytes"}."""
    if not os.access(chromium, os.X_OK):
        raise ChromiumError(f"{chromium}: not found or not executable (Debian: apt-get install "
                            "chromium)")
    uri = _page_uri(str(html_path))
    common = [f"--virtual-time-budget={int(virtual_time_ms)}",
              f"--window-size={window_size[0]},{window_size[1]}"]
    dom = _run(chromium, [*common, "--dump-dom", uri], timeout_s)
    loaded = _body_count(dom, "data-images-loaded", str(html_path))
    total = _body_count(dom, "data-images-total", str(html_path))
    with tempfile.TemporaryDirectory(prefix="cemiray-screenshot-") as folder:
        local = os.path.join(folder, "screenshot.png")
        _run(chromium, [*common, f"--screenshot={local}", uri], timeout_s)
        if not os.path.isfile(local) or os.path.getsize(local) == 0:
            raise ChromiumError(f"{chromium} wrote no screenshot of {html_path}")
        with open(local, "rb") as f:
            content = f.read()
    storage.atomic_write_bytes(screenshot_png, content)
    return {"images_total": total, "images_loaded": loaded, "screenshot": screenshot_png,
            "bytes": len(content)}
