"""The manifest and dataset card of `cemiray generate` (pipeline).

What a generated dataset says about itself: the manifest (JSON, written last, so a folder with a
manifest is a finished dataset), a Markdown dataset card, a preview grid of faces and a histogram
of the achieved similarity per target m. Statistics are read back from the shards, so they
describe every shard, including those an earlier run wrote."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cemiray.data import storage

MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"
GRID_NAME = "preview_grid.png"
HISTOGRAM_NAME = "similarity_histogram.png"
MANIFEST_FORMAT = "cemiray-generate-manifest/1"
LEAKAGE_THRESHOLD = 0.3  # DCFace/CemiFace keep identities below this similarity to real ones
MAX_GROUPS = 12


def read_columns(shard_urls: list[str], columns: list[str]) -> pa.Table:
    """The named columns (never the images) of every shard, concatenated in shard order."""
    tables = []
    for url in shard_urls:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables)


def similarity_groups(target: np.ndarray, achieved: np.ndarray,
                      within: np.ndarray | None = None,
                      judge: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Achieved similarity per target m: one group per distinct target when there are few,
    else equal-width bins of the target range."""
    levels = np.unique(target)
    if len(levels) <= MAX_GROUPS:
        groups = [(float(v), float(v), target == v) for v in levels]
    else:
        edges = np.linspace(target.min(), target.max(), 9)
        bins = np.clip(np.searchsorted(edges, target, side="right") - 1, 0, 7)
        groups = [(float(edges[b]), float(edges[b + 1]), bins == b) for b in range(8)]
    out = []
    for low, high, mask in groups:
        if not mask.any():
            continue
        values = achieved[mask]
        group: dict[str, Any] = {
            "target": low if low == high else [low, high],
            "images": int(mask.sum()),
            "achieved_mean": float(values.mean()),
            "achieved_std": float(values.std()),
            "achieved_min": float(values.min()),
            "achieved_max": float(values.max()),
            "mean_abs_error": float(np.abs(values - target[mask]).mean()),
        }
        if within is not None:
            group["within_tolerance"] = float(within[mask].mean())
        if judge is not None:
            group["judge_mean"] = float(judge[mask].mean())
        out.append(group)
    return out


def attribute_summary(per_identity: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Distribution of each attribute over identities: value counts, or numeric statistics."""
    summary = {}
    for name, values in per_identity.items():
        present = [v for v in values if v is not None and not (isinstance(v, float)
                                                               and math.isnan(v))]
        numeric = present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  for v in present)
        if numeric:
            arr = np.asarray(present, dtype=np.float64)
            summary[name] = {"kind": "numeric", "identities": len(present),
                             "missing": len(values) - len(present), "mean": float(arr.mean()),
                             "min": float(arr.min()), "max": float(arr.max())}
        else:
            counts = Counter(str(v) for v in present)
            summary[name] = {"kind": "categorical", "identities": len(present),
                             "missing": len(values) - len(present),
                             "counts": dict(counts.most_common(20))}
    return summary


def leakage_summary(leakage_max: list[Any] | None, audit: dict[str, Any] | None,
                    audit_url: str | None) -> dict[str, Any] | None:
    """From the seed table's `leakage_max` column (each identity's highest similarity to a real
    face) and/or an audit JSON's top-level scalar fields; None when neither exists."""
    out: dict[str, Any] = {}
    if leakage_max is not None:
        arr = np.asarray([v for v in leakage_max if v is not None], dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            out["seed_table"] = {
                "identities": int(arr.size), "max": float(arr.max()), "mean": float(arr.mean()),
                "threshold": LEAKAGE_THRESHOLD,
                "above_threshold": int((arr >= LEAKAGE_THRESHOLD).sum()),
            }
    if audit is not None:
        out["audit"] = {"url": audit_url, **{k: v for k, v in audit.items()
                                              if isinstance(v, (str, int, float, bool))}}
    return out or None


def write_histogram(url: str, target: np.ndarray, achieved: np.ndarray) -> None:
    """Overlaid histograms of achieved similarity, one per target group, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for group in similarity_groups(target, achieved):
        t = group["target"]
        mask = (target == t) if not isinstance(t, list) else (target >= t[0]) & (target <= t[1])
        label = f"m = {t:g}" if not isinstance(t, list) else f"m in [{t[0]:.2f}, {t[1]:.2f}]"
        line = ax.hist(achieved[mask], bins=50, range=(-1, 1), alpha=0.5,
                       label=f"{label} ({int(mask.sum())})")[2][0]
        for value in (t if isinstance(t, list) else [t]):
            ax.axvline(value, color=line.get_facecolor(), linestyle="--", linewidth=1)
    ax.set_xlabel("achieved similarity to the identity embedding")
    ax.set_ylabel("images")
    ax.set_title("Achieved vs target similarity m (dashed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage.atomic_write_bytes(url, buf.getvalue())


def write_preview_grid(url: str, shard_urls: list[str], identities: int, samples: int) -> dict:
    """A grid of the first identities (rows) × their first samples (columns)."""
    from cemiray.data.images import decode_image, encode_png
    from cemiray.data.parquet_shards import iter_shard

    cells: dict[int, dict[int, np.ndarray]] = {}
    for shard in shard_urls:
        for row in iter_shard(shard):
            label, sample = int(row["label"]), int(row["sample"])
            if sample < samples and (label in cells or len(cells) < identities):
                cells.setdefault(label, {})[sample] = decode_image(row["image"], where=shard)
        if len(cells) >= identities and all(len(v) >= samples for v in cells.values()):
            break
    if not cells:
        raise ValueError("preview grid: the shards hold no images")
    first = next(iter(next(iter(cells.values())).values()))
    h, w = first.shape[:2]
    cols = max(len(v) for v in cells.values())
    gap = 2
    grid = np.full((len(cells) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for r, label in enumerate(sorted(cells)):
        for c, sample in enumerate(sorted(cells[label])):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = \
                cells[label][sample]
    storage.atomic_write_bytes(url, encode_png(grid))
    return {"identities": len(cells), "samples": cols}


def write_manifest(out_url: str, manifest: dict[str, Any]) -> str:
    url = storage.join(out_url, MANIFEST_NAME)
    storage.atomic_write_text(url, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return url


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _short(sha: str | None) -> str:
    return f"`sha256:{sha[:12]}`" if sha else "—"


def _made_section(m: dict[str, Any]) -> list[str]:
    cfg, lineage = m["config"], m["lineage"]
    sampling = cfg.get("sampling") or cfg  # manifests of older runs held these keys flat
    lines = [
        "## How it was made", "",
        ("Images were sampled with `cemiray generate` from a CemiFace similarity-conditioned "
         "diffusion generator: each image is conditioned on its identity's embedding and a "
         "target similarity m, and the conditioning recogniser measures the similarity it "
         "achieved."), "",
        (f"- Generator: `{cfg['generator']}` {_short(lineage['generator'])}; "
         f"{sampling['scheduler']} sampler, {sampling['steps']} steps"),
        f"- Conditioning recogniser: `{cfg['recognizer']}` {_short(lineage['recognizer'])}",
        f"- Seed table: `{cfg['seeds']}` {_short(lineage['seeds'])}",
        (f"- Target similarity: {m['schedule']}; global seed {cfg['seed']} (every image's m, "
         "noise seed and variation are functions of the seed, its seed_id and sample index)"),
    ]
    if cfg.get("judge"):
        lines.append(f"- Independent judge: `{cfg['judge']}` {_short(lineage.get('judge'))}, "
                     "comparing each image with its identity's inquiry image")
    if sampling.get("closed_loop"):
        loop = sampling["closed_loop"]
        lines.append(f"- Closed loop: images further than {loop['tolerance']} from their target "
                     f"were re-sampled, at most {loop['max_tries']} tries, closest kept")
    if cfg.get("variation"):
        plan = cfg["variation"]
        lines.append(f"- Variation plan: {plan['kind']} over "
                     f"{plan.get('attributes') or 'every attribute of the generator'}"
                     + (f" from `{plan['table']}`" if plan.get("table") else "")
                     + "; each row records its request (`variation`, JSON)"
                     + (f" and the independent estimator's reading (`variation_measured`, "
                        f"`{cfg['variation_estimator']}`)" if cfg.get("variation_estimator")
                        else ""))
    sources = m.get("sources") or {}
    if sources:
        lines.append("- Identity sources: " + ", ".join(f"{k} ({v})" for k, v in sources.items()))
    return lines + [""]


def _similarity_section(m: dict[str, Any]) -> list[str]:
    groups = m["similarity"]
    extra = [k for k in ("within_tolerance", "judge_mean") if groups and k in groups[0]]
    head = ["target m", "images", "achieved mean", "std", "min", "max", "mean abs error", *extra]
    lines = ["## Similarity to the identity", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        values = [g["target"], g["images"], g["achieved_mean"], g["achieved_std"],
                  g["achieved_min"], g["achieved_max"], g["mean_abs_error"],
                  *[g[k] for k in extra]]
        lines.append("| " + " | ".join(_fmt(v) for v in values) + " |")
    return lines + ["", f"![achieved similarity per target m]({HISTOGRAM_NAME})", ""]


def _attribute_section(m: dict[str, Any]) -> list[str]:
    lines = ["## Attributes", ""]
    if not m["attributes"]:
        return lines + ["The seed table carries no attribute columns.", ""]
    lines += ["Distributions over identities (every image of an identity shares them).", ""]
    for name, s in m["attributes"].items():
        if s["kind"] == "numeric":
            lines.append(f"- `{name}`: mean {s['mean']:.3f}, min {s['min']:.3f}, "
                         f"max {s['max']:.3f} ({s['identities']} identities, "
                         f"{s['missing']} missing)")
        else:
            counts = ", ".join(f"{k}: {v}" for k, v in s["counts"].items())
            lines.append(f"- `{name}`: {counts} ({s['missing']} missing)")
    return lines + [""]


def _leakage_section(m: dict[str, Any]) -> list[str]:
    lines = ["## Leakage audit", ""]
    leak = m.get("leakage")
    if not leak:
        return lines + [("No audit was given (no `leakage_max` column in the seed table and no "
                         "`leakage_audit` file): the resemblance of these identities to real "
                         "people is unmeasured."), ""]
    if "seed_table" in leak:
        s = leak["seed_table"]
        lines.append(f"- Seed table `leakage_max` (highest similarity of each identity to a real "
                     f"face): max {s['max']:.3f}, mean {s['mean']:.3f}; {s['above_threshold']} "
                     f"of {s['identities']} identities at or above {s['threshold']}")
    if "audit" in leak:
        a = leak["audit"]
        lines.append(f"- Audit `{a.get('url')}`: " + ", ".join(
            f"{k} = {_fmt(v)}" for k, v in a.items() if k != "url"))
    return lines + [""]


def render_card(m: dict[str, Any]) -> str:
    """The Markdown dataset card of a manifest."""
    c = m["counts"]
    lines = [
        f"# Synthetic face dataset: {m['name']}", "",
        (f"{c['identities']} synthetic identities × {c['images_per_identity']} images = "
         f"{c['images']} images ({m['image_size']}×{m['image_size']} PNG) in {c['shards']} "
         f"Parquet shards under `parquet/`; labels are identity indices 0..{c['identities'] - 1}."),
        "",
        f"![preview: identities in rows, samples in columns]({GRID_NAME})", "",
    ]
    lines += _made_section(m)
    lines += _similarity_section(m)
    lines += _attribute_section(m)
    lines += _leakage_section(m)
    lines += [
        "## Intended use", "",
        ("Training and evaluating face-recognition models without collecting new face images, "
         "and research on how intra-class similarity shapes such training (CemiFace). Not for "
         "identifying, verifying or profiling real people, and not as evidence about demographic "
         "groups beyond the attribute labels the seed table assigned. Identities derive from the "
         "seed table: when its embeddings come from real inquiry images, generated faces can "
         "resemble those people — read the leakage audit before sharing the dataset."), "",
        "## Files", "",
        ("- `parquet/shard-*.parquet`: one row per image (PNG bytes, label, seed_id, sample, "
         "target m, achieved similarity, seed, sampler settings, content hashes, attributes)"),
        (f"- `{MANIFEST_NAME}`: resolved config, counts, hashes and shard list; `plan.json`: what "
         "the dataset is (a rerun with another plan is refused)"),
    ]
    for name, url in (m.get("exports") or {}).items():
        lines.append(f"- `{name}`: `{url}`")
    return "\n".join(lines) + "\n"


def write_card(out_url: str, manifest: dict[str, Any]) -> str:
    url = storage.join(out_url, CARD_NAME)
    storage.atomic_write_text(url, render_card(manifest))
    return url
