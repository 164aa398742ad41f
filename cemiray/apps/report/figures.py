"""The report's figures (apps): matplotlib charts drawn from the results document.

The report's figures, drawn with matplotlib's Agg canvas (no pyplot, so no global state and no
display). Each function checks the part of the results it draws, writes one PNG to a storage URL
and returns the numbers it plotted, so report.json holds the data behind every picture."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cemiray.data import storage

DPI = 110
REAL_COLOR = "0.25"


class ResultsError(ValueError):
    """The results document is malformed; the message names the field."""


def number(mapping: Mapping[str, Any], key: str, where: str, optional: bool = False
           ) -> float | None:
    """mapping[key] as a float; a clear error naming `where.key` when it is missing (unless
    optional) or not a finite number."""
    if not isinstance(mapping, Mapping):
        raise ResultsError(f"{where}: expected an object, got {type(mapping).__name__}")
    value = mapping.get(key)
    if value is None:
        if optional:
            return None
        raise ResultsError(f"{where}.{key}: missing")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ResultsError(f"{where}.{key}: expected a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ResultsError(f"{where}.{key}: not finite ({value!r})")
    return float(value)


def m_values(row: Mapping[str, Any], where: str) -> list[float] | None:
    """A training set's similarity conditions: None for real data, else a list of numbers."""
    m = row.get("m")
    if m is None:
        return None
    if isinstance(m, (int, float)) and not isinstance(m, bool):
        m = [m]
    if not isinstance(m, Sequence) or isinstance(m, str) or not m:
        raise ResultsError(f"{where}.m: expected null, a number or a non-empty list, got {m!r}")
    return [number({"m": v}, "m", f"{where}.m[{i}]") for i, v in enumerate(m)]


def plain(text: object) -> str:
    """Text for a matplotlib label: '$' escaped so a set name is never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def _new_figure(width: float, height: float) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure: Figure, png_url: str) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    storage.atomic_write_bytes(png_url, buffer.getvalue())


def accuracy_bars(training_sets: Sequence[Mapping[str, Any]], png_url: str) -> dict[str, Any]:
    """Verification accuracy of every training set: the mean with its 95% CI over trainings as
    error bar where the rows have one, else the std over the folds."""
    names, means, stds, kinds = [], [], [], []
    for i, row in enumerate(training_sets):
        where = f"training_sets[{i}]"
        names.append(str(row["name"]))
        kinds.append(str(row.get("kind")))
        means.append(100 * number(row, "accuracy", where))
        spread = number(row, "accuracy_ci95", where, optional=True)
        if spread is None:
            spread = number(row, "accuracy_std", where, optional=True)
        stds.append(100 * (spread or 0.0))
    figure, axes = _new_figure(max(5.0, 0.9 * len(names) + 2), 4)
    colors = [REAL_COLOR if kind == "real" else "C0" for kind in kinds]
    positions = np.arange(len(names))
    axes.bar(positions, means, yerr=stds, capsize=4, color=colors)
    for x, mean, std in zip(positions, means, stds, strict=True):
        axes.annotate(f"{mean:.2f}", (x, mean + std), textcoords="offset points",
                      xytext=(0, 3), ha="center", fontsize="small")
    crowded = len(names) > 4
    axes.set_xticks(positions, [plain(n) for n in names], rotation=30 if crowded else 0,
                    ha="right" if crowded else "center")
    low = min(m - s for m, s in zip(means, stds, strict=True))
    axes.set_ylim(max(0.0, low - 5), 101)
    axes.set_ylabel("verification accuracy (%)")
    axes.grid(True, axis="y", alpha=0.3)
    _save(figure, png_url)
    return {"names": names, "accuracy_percent": means, "accuracy_std_percent": stds}


def m_sweep_points(training_sets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The synthetic sets conditioned on one similarity value each, sorted by m."""
    points = []
    for i, row in enumerate(training_sets):
        where = f"training_sets[{i}]"
        m = m_values(row, where)
        if row.get("kind") == "real" or m is None or len(m) != 1:
            continue
        points.append({"name": str(row["name"]), "m": m[0],
                       "accuracy": number(row, "accuracy", where),
                       "accuracy_std": number(row, "accuracy_std", where, optional=True) or 0.0})
    return sorted(points, key=lambda p: p["m"])


def m_sweep(training_sets: Sequence[Mapping[str, Any]], png_url: str) -> dict[str, Any]:
    """Accuracy ± std against the single similarity condition m, with the real set as a line."""
    points = m_sweep_points(training_sets)
    if not points:
        raise ResultsError("training_sets: no synthetic set with a single m value to sweep")
    figure, axes = _new_figure(6, 4)
    ms = [p["m"] for p in points]
    means = [100 * p["accuracy"] for p in points]
    stds = [100 * p["accuracy_std"] for p in points]
    axes.errorbar(ms, means, yerr=stds, marker="o", capsize=4, color="C0", label="synthetic")
    reals = []
    for i, row in enumerate(training_sets):
        if row.get("kind") == "real":
            where = f"training_sets[{i}]"
            accuracy = 100 * number(row, "accuracy", where)
            spread = 100 * (number(row, "accuracy_std", where, optional=True) or 0.0)
            label = "real" if row["name"] == "real" else f"{plain(row['name'])} (real)"
            axes.axhline(accuracy, color=REAL_COLOR, linestyle="--", label=label)
            if spread:
                axes.axhspan(accuracy - spread, accuracy + spread, color=REAL_COLOR, alpha=0.12)
            reals.append({"name": str(row["name"]), "accuracy_percent": accuracy,
                          "accuracy_std_percent": spread})
    axes.set_xlabel("similarity condition m")
    axes.set_ylabel("verification accuracy (%)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    _save(figure, png_url)
    return {"m": ms, "names": [p["name"] for p in points], "accuracy_percent": means,
            "accuracy_std_percent": stds, "real": reals}


def calibration(rows: Sequence[Mapping[str, Any]], png_url: str) -> dict[str, Any]:
    """Achieved similarity (mean ± std, by E_id and, where present, by the independent judge)
    against the target, with y = x."""
    if not rows:
        raise ResultsError("calibration: empty list")
    targets, means, stds = [], [], []
    for i, row in enumerate(rows):
        where = f"calibration[{i}]"
        targets.append(number(row, "target", where))
        means.append(number(row, "achieved_mean", where))
        stds.append(number(row, "achieved_std", where, optional=True) or 0.0)
    judged = [(t, r["judge_mean"], r.get("judge_std") or 0.0)
              for t, r in zip(targets, rows, strict=True) if r.get("judge_mean") is not None]
    figure, axes = _new_figure(5, 5)
    spans = [(m, s) for m, s in zip(means, stds, strict=True)] + [(j[1], j[2]) for j in judged]
    low = min(targets + [m - s for m, s in spans])
    high = max(targets + [m + s for m, s in spans])
    pad = 0.05 * max(high - low, 0.1)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], color=REAL_COLOR,
              linestyle="--", label="achieved = target")
    axes.errorbar(targets, means, yerr=stds, marker="o", capsize=4, linestyle="none",
                  color="C1", label="E_id (mean ± std)")
    if judged:
        axes.errorbar([j[0] + 0.01 for j in judged], [j[1] for j in judged],
                      yerr=[j[2] for j in judged], marker="s", capsize=4, linestyle="none",
                      color="C2", label="independent judge (mean ± std)")
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(low - pad, high + pad)
    axes.set_aspect("equal")
    axes.set_xlabel("target similarity m")
    axes.set_ylabel("achieved cosine similarity to the seed")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    _save(figure, png_url)
    return {"target": targets, "achieved_mean": means, "achieved_std": stds}


def histogram_densities(report: Mapping[str, Any], where: str
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, mated density, non-mated density) from a ScoreReport.to_dict() histogram."""
    histogram = report.get("histogram") if isinstance(report, Mapping) else None
    if not isinstance(histogram, Mapping):
        raise ResultsError(f"{where}.histogram: missing")
    try:
        edges = np.asarray(histogram["edges"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"{where}.histogram.edges: missing or not numbers ({exc})") from exc
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ResultsError(f"{where}.histogram.edges: need at least 2 increasing values")
    densities = []
    for side in ("mated", "nonmated"):
        try:
            counts = np.asarray(histogram[side], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"{where}.histogram.{side}: missing or not numbers ({exc})") from exc
        if counts.shape != (edges.size - 1,):
            raise ResultsError(f"{where}.histogram.{side}: {counts.size} counts for "
                             f"{edges.size - 1} bins")
        if np.any(counts < 0) or not counts.sum() > 0:
            raise ResultsError(f"{where}.histogram.{side}: counts must be >= 0 and not all zero")
        densities.append(counts / (counts.sum() * np.diff(edges)))
    return edges, densities[0], densities[1]


def _distance_text(distances: Mapping[str, Any] | None, where: str) -> str:
    if not distances:
        return ""
    lines = []
    for side in ("mated", "nonmated"):
        if side in distances:
            d = distances[side]
            w = number(d, "wasserstein", f"{where}.{side}")
            kl_ab = number(d, "kl_a_b", f"{where}.{side}")
            kl_ba = number(d, "kl_b_a", f"{where}.{side}")
            label = "mated" if side == "mated" else "non-mated"
            lines.append(f"{label:9s} W1 {w:.3f}, KL {kl_ab:.3f} / {kl_ba:.3f}")
    return "\n".join(lines)


def score_histograms(name: str, report: Mapping[str, Any], png_url: str,
                     real_name: str | None = None, real: Mapping[str, Any] | None = None,
                     distances: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mated (filled) and non-mated (outlined) score densities of one set, overlaid on the
    real set's (dashed grey) when given; the distances to the real set in a corner box."""
    edges, mated, nonmated = histogram_densities(report, f"score_distributions[{name!r}]")
    figure, axes = _new_figure(7, 4)
    label = plain(name)
    axes.stairs(mated, edges, fill=True, alpha=0.45, color="C0", label=f"{label} mated")
    axes.stairs(nonmated, edges, fill=True, alpha=0.45, color="C1", label=f"{label} non-mated")
    data: dict[str, Any] = {"name": name, "edges": edges.tolist(), "mated_density":
                            mated.tolist(), "nonmated_density": nonmated.tolist()}
    if real is not None:
        real_edges, real_mated, real_nonmated = histogram_densities(
            real, f"score_distributions[{real_name!r}]")
        axes.stairs(real_mated, real_edges, color=REAL_COLOR, linestyle="--", linewidth=1.5,
                    label=f"{plain(real_name)} mated")
        axes.stairs(real_nonmated, real_edges, color=REAL_COLOR, linestyle=":", linewidth=1.5,
                    label=f"{plain(real_name)} non-mated")
        data.update(real=real_name, real_edges=real_edges.tolist(),
                    real_mated_density=real_mated.tolist(),
                    real_nonmated_density=real_nonmated.tolist())
    text = _distance_text(distances, f"distances[{name!r}]")
    if text:
        heading = f"vs {plain(real_name or 'real')} (KL: set‖real / real‖set)"
        axes.text(0.01, 0.98, f"{heading}\n{text}", transform=axes.transAxes, va="top",
                  ha="left", fontsize="x-small", family="monospace",
                  bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
        data["distances"] = dict(distances)
    axes.set_ylim(0, 1.3 * axes.get_ylim()[1])
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.legend(fontsize="x-small", loc="upper right")
    axes.grid(True, alpha=0.3)
    _save(figure, png_url)
    return data


def seed_attributes(attributes: Mapping[str, Mapping[str, Any]], png_url: str
                    ) -> dict[str, Any]:
    """Target against achieved share of the seeds in every category, one panel per attribute."""
    if not isinstance(attributes, Mapping) or not attributes:
        raise ResultsError("seed_attributes: expected a non-empty object of attributes")
    data: dict[str, Any] = {}
    for attribute, categories in attributes.items():
        where = f"seed_attributes[{attribute!r}]"
        if not isinstance(categories, Mapping) or not categories:
            raise ResultsError(f"{where}: expected a non-empty object of categories")
        data[str(attribute)] = {
            "categories": [str(c) for c in categories],
            "target": [number(v, "target", f"{where}[{c!r}]") for c, v in categories.items()],
            "achieved": [number(v, "achieved", f"{where}[{c!r}]") for c, v in categories.items()],
        }
    widths = [max(2.5, 0.6 * len(d["categories"]) + 1) for d in data.values()]
    figure = Figure(figsize=(sum(widths) + 0.5, 3.8), dpi=DPI)
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(data), squeeze=False, gridspec_kw={"width_ratios": widths})
    for axes, (attribute, d) in zip(panels[0], data.items(), strict=True):
        positions = np.arange(len(d["categories"]))
        axes.bar(positions - 0.2, d["target"], width=0.4, color="0.75", edgecolor=REAL_COLOR,
                 hatch="//", label="target")
        axes.bar(positions + 0.2, d["achieved"], width=0.4, color="C2", label="achieved")
        axes.set_xticks(positions, [plain(c) for c in d["categories"]])
        axes.set_title(plain(attribute))
        axes.set_ylabel("share of seeds")
        axes.grid(True, axis="y", alpha=0.3)
    panels[0][0].legend(fontsize="small")
    _save(figure, png_url)
    return data
