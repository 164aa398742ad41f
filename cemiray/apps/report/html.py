"""The report page (apps): report.html, figures/*.png and report.json in one movable folder.

The experiment report: one self-contained folder with report.html, figures/*.png (relative
links only, so the folder can be moved or served as is) and report.json (the results plus the
data behind every figure). Every piece of text from the results is HTML-escaped."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import numpy as np

from cemiray.apps.report import figures as fig
from cemiray.apps.report import markup as mk
from cemiray.apps.report.figures import ResultsError
from cemiray.apps.report.markup import fmt, fmt_percent
from cemiray.data import storage


class _FigureFolder:
    """Writes figures into out/figures and remembers what each holds for report.json."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.entries: list[dict[str, Any]] = []

    def _next_file(self, stem: str) -> str:
        return f"figures/{len(self.entries):02d}_{mk.slug(stem)}.png"

    def draw(self, stem: str, section: str, title: str, draw: Callable[..., dict],
             *args: Any, **kwargs: Any) -> str:
        file = self._next_file(stem)
        data = draw(*args, png_url=storage.join(self.out, file), **kwargs)
        self.entries.append({"file": file, "section": section, "title": title, "data": data})
        return _figure_html(file, title)

    def copy(self, source: str, stem: str, section: str, title: str, where: str) -> str:
        try:
            content = storage.read_bytes(source)
        except storage.StorageError as exc:
            raise ResultsError(f"{where}: cannot read {source!r} ({exc})") from exc
        if not content.startswith(mk.PNG_SIGNATURE):
            raise ResultsError(f"{where}: {source!r} is not a PNG file")
        file = self._next_file(stem)
        storage.atomic_write_bytes(storage.join(self.out, file), content)
        self.entries.append({"file": file, "section": section, "title": title,
                             "data": {"source": source}})
        return _figure_html(file, title)


def _figure_html(file: str, caption: str) -> str:
    return (f'<figure><img src="{mk.text(quote(file))}" alt="{mk.text(caption)}">'
            f"<figcaption>{mk.text(caption)}</figcaption></figure>")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{mk.text(title)}</h2>{body}</section>'


def _rows(results: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    rows = results[key]
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise ResultsError(f"{key}: expected a list of objects")
    return rows


def _accuracy_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    rows = _rows(results, "training_sets")
    far_keys: list[str] = []
    for row in rows:
        for key in row.get("tar_at_far") or {}:
            if key not in far_keys:
                far_keys.append(key)
    table = []
    for i, row in enumerate(rows):
        where = f"training_sets[{i}]"
        tars = row.get("tar_at_far") or {}
        table.append([
            row["name"], row.get("kind", "—"), mk.fmt_m(fig.m_values(row, where)),
            fmt(row.get("images")), fmt(row.get("identities")),
            _accuracy_text(row, where),
            *[fmt_percent(fig.number(tars, k, f"{where}.tar_at_far", optional=True))
              for k in far_keys],
            fmt_percent(fig.number(row, "eer", where, optional=True)),
            fmt(fig.number(row, "wall_seconds", where, optional=True), 3),
        ])
    spread = ("mean ± 95% CI over trainings" if any("accuracy_ci95" in r for r in rows)
              else "mean ± std over folds")
    headers = ["training set", "kind", "m", "images", "identities", f"accuracy ({spread})",
               *[f"TAR @ FAR={k}" for k in far_keys], "EER", "wall time (s)"]
    chart = folder.draw("accuracy", "accuracy", f"Verification accuracy per training set "
                        f"({spread})", fig.accuracy_bars, rows)
    return _section("accuracy", "Verification accuracy",
                    mk.table(headers, table, 3) + _claims(results) + chart)


def _accuracy_text(row: Mapping[str, Any], where: str) -> str:
    mean = fig.number(row, "accuracy", where)
    ci = fig.number(row, "accuracy_ci95", where, optional=True)
    if ci is None:
        return fmt_percent(mean, fig.number(row, "accuracy_std", where, optional=True))
    return f"{fmt_percent(mean, ci)} (n = {row.get('trainings')})"


def _claims(results: Mapping[str, Any]) -> str:
    """The paired tests of the claims, each said plainly, 'not significant' included."""
    claims = results.get("claims") or []
    if not claims:
        return ""
    items = "".join(f"<li>{mk.text(c.get('claim', ''))}: {mk.text(c.get('verdict', ''))}</li>"
                    for c in claims)
    return f"<p>Paired t-tests over the trainings (same seeds, same test pairs):</p><ul>{items}</ul>"


def _m_sweep_section(results: Mapping[str, Any], folder: _FigureFolder) -> str | None:
    rows = _rows(results, "training_sets")
    if not fig.m_sweep_points(rows):
        return None
    chart = folder.draw("m_sweep", "m_sweep", "Accuracy against the similarity condition m; "
                        "dashed line: the real set", fig.m_sweep, rows)
    return _section("m-sweep", "m-sweep", chart)


def _calibration_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    rows = _rows(results, "calibration")
    chart = folder.draw("calibration", "calibration", "Achieved against target similarity "
                        "(E_id, which conditioned the generator, and the independent judge)",
                        fig.calibration, rows)
    judged = any("judge_mean" in r for r in rows)
    table = [[fmt(r.get("target"), 3), fmt(r.get("achieved_mean")), fmt(r.get("achieved_std")),
              *([fmt(r.get("judge_mean")), fmt(r.get("judge_std"))] if judged else []),
              fmt(r.get("n"))] for r in rows]
    headers = ["target", "E_id mean", "E_id std",
               *(["judge mean", "judge std"] if judged else []), "n"]
    return _section("calibration", "Calibration", mk.table(headers, table) + chart)


def _grids_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    parts = []
    for i, grid in enumerate(_rows(results, "sample_grids")):
        where = f"sample_grids[{i}]"
        if not isinstance(grid.get("png"), str):
            raise ResultsError(f"{where}.png: missing or not a URL")
        caption = str(grid.get("caption", ""))
        parts.append(folder.copy(grid["png"], f"grid_{i}", "sample_grids", caption, where))
    return _section("sample-grids", "Sample grids", "".join(parts))


def _real_name(results: Mapping[str, Any], reports: Mapping[str, Any]) -> str | None:
    for row in results.get("training_sets", []):
        if row.get("kind") == "real" and row.get("name") in reports:
            return str(row["name"])
    return None


def _scores_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    reports = results["score_distributions"]
    if not isinstance(reports, Mapping) or not reports:
        raise ResultsError("score_distributions: expected a non-empty object keyed by set name")
    all_distances = results.get("distances") or {}
    real_name = _real_name(results, reports)
    table, charts = [], []
    for name, report in reports.items():
        where = f"score_distributions[{name!r}]"
        if not isinstance(report, Mapping):
            raise ResultsError(f"{where}: expected an object")
        distances = all_distances.get(name)
        mated = distances.get("mated", {}) if distances else {}
        nonmated = distances.get("nonmated", {}) if distances else {}
        table.append([
            name, fmt(report.get("num_images")), fmt(report.get("num_identities")),
            f"{fmt(report.get('mated_mean'), 3)} ± {fmt(report.get('mated_std'), 3)}",
            f"{fmt(report.get('nonmated_mean'), 3)} ± {fmt(report.get('nonmated_std'), 3)}",
            fmt(report.get("d_prime"), 3), fmt_percent(report.get("eer")),
            fmt(mated.get("wasserstein"), 3), fmt(mated.get("kl_a_b"), 3),
            fmt(nonmated.get("wasserstein"), 3), fmt(nonmated.get("kl_a_b"), 3),
        ])
        is_real = name == real_name
        title = (f"{name}: mated / non-mated scores" if is_real or real_name is None
                 else f"{name} against {real_name}: mated / non-mated scores")
        charts.append(folder.draw(
            f"scores_{name}", "score_distributions", title, fig.score_histograms, str(name),
            report, real_name=None if is_real else real_name,
            real=None if is_real or real_name is None else reports[real_name],
            distances=distances))
    headers = ["set", "images", "identities", "mated mean ± std", "non-mated mean ± std", "d′",
               "EER", "mated W1", "mated KL", "non-mated W1", "non-mated KL"]
    note = ("<p>Scores: cosine similarity under the judge. Distances (Wasserstein-1, KL of "
            f"set ‖ {mk.text(real_name or 'real')}) are to the real set.</p>")
    return _section("scores", "Mated / non-mated score distributions",
                    note + mk.table(headers, table) + "".join(charts))


def _seed_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    chart = folder.draw("seed_attributes", "seed_attributes", "Seeds' attribute shares: target "
                        "against achieved", fig.seed_attributes, results["seed_attributes"])
    data = folder.entries[-1]["data"]
    table = [[attribute, category, fmt_percent(target), fmt_percent(achieved)]
             for attribute, d in data.items()
             for category, target, achieved in zip(d["categories"], d["target"], d["achieved"],
                                                   strict=True)]
    return _section("seeds", "Seed attributes",
                    mk.table(["attribute", "category", "target", "achieved"], table, 2) + chart)


def _leakage_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    leakage = results["leakage"]
    if not isinstance(leakage, Mapping):
        raise ResultsError("leakage: expected an object")
    flagged = leakage.get("flagged")
    verdict = (f'<p class="warn">{mk.text(fmt(flagged))} seeds flagged as too close to a training '
               "identity.</p>" if flagged else "<p>No seed flagged.</p>")
    rows = [[key, fmt(value)] for key, value in leakage.items()]
    return _section("leakage", "Leakage audit", verdict + mk.table(["check", "value"], rows))


def _centres_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    centres = results["centres"]
    groups = centres.get("groups") if isinstance(centres, Mapping) else None
    if not isinstance(groups, list):
        raise ResultsError("centres.groups: expected a list of objects")
    table = []
    for i, g in enumerate(groups):
        where = f"centres.groups[{i}]"
        table.append([fmt(g.get("group")), fmt(g.get("mean_similarity"), 3),
                      fmt_percent(fig.number(g, "accuracy", where, optional=True),
                                  fig.number(g, "accuracy_std", where, optional=True)),
                      fmt(g.get("images"))])
    headers = ["group", "mean similarity", "accuracy (mean ± std)", "images"]
    return _section("centres", "Identity centres", mk.table(headers, table))


def _provenance_part(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent[key]
    if not isinstance(value, Mapping):
        raise ResultsError(f"provenance.{key}: expected an object")
    return value


def _provenance_section(results: Mapping[str, Any], folder: _FigureFolder) -> str:
    provenance = results["provenance"]
    if not isinstance(provenance, Mapping):
        raise ResultsError("provenance: expected an object")
    parts = []
    if provenance.get("commit"):
        parts.append(f"<p>commit <code>{mk.text(provenance['commit'])}</code></p>")
    for key, title in (("versions", "Versions"), ("hashes", "Hashes")):
        if provenance.get(key):
            parts.append(f"<h3>{title}</h3>" + mk.table(
                ["name", "value"], [[k, v] for k, v in _provenance_part(provenance, key).items()]))
    times = provenance.get("wall_times")
    if times:
        times = _provenance_part(provenance, "wall_times")
        rows = [[stage, fmt(fig.number(times, stage, "provenance.wall_times"), 4)]
                for stage in times]
        rows.append(["total", fmt(sum(float(v) for v in times.values()), 4)])
        parts.append("<h3>Wall times (s)</h3>" + mk.table(["stage", "seconds"], rows))
    for stage, config in (_provenance_part(provenance, "configs") if provenance.get("configs")
                          else {}).items():
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>config: {mk.text(stage)}</summary>"
                     f"<pre>{mk.text(text)}</pre></details>")
    return _section("provenance", "Provenance", "".join(parts))


# The schema's order; a section is drawn only when its key is present in the results.
SECTIONS: tuple[tuple[str, Callable[[Mapping[str, Any], _FigureFolder], str | None]], ...] = (
    ("training_sets", _accuracy_section),
    ("training_sets", _m_sweep_section),
    ("calibration", _calibration_section),
    ("sample_grids", _grids_section),
    ("score_distributions", _scores_section),
    ("seed_attributes", _seed_section),
    ("leakage", _leakage_section),
    ("centres", _centres_section),
    ("provenance", _provenance_section),
)


def _json_ready(value: Any, where: str) -> Any:
    """A copy fit for strict JSON: numpy scalars unwrapped, non-finite floats written as the
    strings 'inf', '-inf', 'nan' (JSON has no such numbers); anything else is an error."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-ready")


def _header(results: Mapping[str, Any]) -> str:
    created = results.get("created") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = f"created {mk.text(created)}"
    machine = results.get("machine")
    if isinstance(machine, Mapping) and machine:
        line += " · machine: " + ", ".join(
            f"{mk.text(k)} {mk.text(fmt(v))}" for k, v in machine.items())
    return f"<header><h1>{mk.text(results['title'])}</h1><p>{line}</p></header>"


def _check_required(results: Mapping[str, Any]) -> None:
    if not isinstance(results, Mapping):
        raise ResultsError(f"results: expected an object, got {type(results).__name__}")
    if not isinstance(results.get("title"), str) or not results["title"]:
        raise ResultsError("results.title: missing")
    rows = results.get("training_sets")
    if not isinstance(rows, list) or not rows:
        raise ResultsError("results.training_sets: expected a non-empty list")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
            raise ResultsError(f"training_sets[{i}].name: missing")


def write_report(results: dict, out: str) -> str:
    """Write out/report.html, out/figures/*.png and out/report.json; return the HTML's URL."""
    _check_required(results)
    ready = _json_ready(results, "results")
    storage.makedirs(storage.join(out, "figures"))
    folder = _FigureFolder(out)
    sections = []
    for key, build in SECTIONS:
        if results.get(key) is not None:
            html = build(results, folder)
            if html:
                sections.append(html)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{mk.text(results['title'])}</title><style>{mk.STYLE}</style></head>\n<body>"
        + _header(results) + "\n".join(sections)
        + f"<script>{mk.IMAGE_CHECK}</script></body></html>\n"
    )
    document = {"results": ready, "figures": _json_ready(folder.entries, "figures")}
    storage.atomic_write_text(storage.join(out, "report.json"),
                              json.dumps(document, indent=2, allow_nan=False) + "\n")
    html_url = storage.join(out, "report.html")
    storage.atomic_write_text(html_url, page)
    return html_url
