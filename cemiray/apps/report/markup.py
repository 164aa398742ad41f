"""The report page's markup (apps): style sheet, image check, escaped text and tables.

The report page's markup: its style sheet, the image check a headless browser reads back,
and escaped text, numbers and tables (every piece of text from the results goes through here)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:1em 2em;
color:#222;background:#fff}
header{border-bottom:2px solid #345;margin-bottom:1em}
header p{color:#555;margin:.2em 0 .8em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#eef1f5}
td.text,th.text{text-align:left}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.warn{color:#a00;font-weight:bold}
code{font-size:.9em}
"""

# Counts the <img> elements that decoded (naturalWidth > 0) once everything has loaded, for a
# headless browser to read back from <body data-images-loaded=... data-images-total=...>.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded++; }
  }
  document.body.dataset.imagesLoaded = String(loaded);
  document.body.dataset.imagesTotal = String(images.length);
});
"""


def text(value: Any) -> str:
    return escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number or value as readable, unescaped text ('—' for missing)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def fmt_percent(mean: float | None, std: float | None = None) -> str:
    """A rate in [0, 1] as '93.00% ± 1.20%'."""
    if mean is None:
        return "—"
    text = f"{100 * mean:.2f}%"
    return text if std is None else f"{text} ± {100 * std:.2f}%"


def fmt_m(m: list[float] | None) -> str:
    if m is None:
        return "—"
    return f"{m[0]:g}" if len(m) == 1 else "{" + ", ".join(f"{v:g}" for v in m) + "}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1) -> str:
    """A table of escaped cells; the first `text_columns` columns left-aligned."""
    def cell(tag: str, index: int, value: Any) -> str:
        css = ' class="text"' if index < text_columns else ""
        return f"<{tag}{css}>{text(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40] or "set"
