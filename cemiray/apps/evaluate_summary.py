"""`cemiray evaluate`'s summary (apps): the units report.json names, the printed table, the result.

What `cemiray evaluate` says about its figures: the `units` mapping written into report.json
(which score or threshold is a cosine similarity and which a squared L2 distance), the table it
prints, with the units and which TAR at FAR figures the pairs could not measure, and the compact
summary `run` returns."""

from __future__ import annotations

from typing import Any

COSINE = "cosine_similarity"
SQUARED_L2 = "squared_l2_distance"

# Every score / threshold field of report.json and its unit; `<set>` is a set's name.
_SCORE_FIELDS = ("mated_mean", "mated_std", "nonmated_mean", "nonmated_std", "eer_threshold",
                 "rates[].threshold", "histogram.edges")
UNITS: dict[str, Any] = {
    COSINE: "dot product of two L2-normalised embeddings, in [-1, 1]; higher is more alike; a "
            "pair is accepted when its score is >= the threshold",
    SQUARED_L2: "squared Euclidean distance of two L2-normalised embeddings, in [0, 4], equal to "
                "2 - 2 x cosine similarity; lower is more alike; the arcface_torch protocol "
                "calls a pair 'same' when its distance is < the threshold",
    "rate": "a share in [0, 1]: accuracy, val, far, eer, tar, fmr, fnmr, min_measurable_far",
    "fields": {
        "verification.<set>.best_thresholds": SQUARED_L2,
        "verification.<set>.eer_threshold": COSINE,
        "verification.<set>.tar_at_far.<far>.threshold": COSINE,
        **{f"verification.<set>.score_distribution.{f}": COSINE for f in _SCORE_FIELDS},
        **{f"datasets.<set>.{f}": COSINE for f in _SCORE_FIELDS},
        "comparisons[].mated.wasserstein": COSINE,
        "comparisons[].nonmated.wasserstein": COSINE,
        "comparisons[].*.kl_a_b, kl_b_a": "nats (KL divergence of score histograms)",
        "*.d_prime": "unitless (mean gap over pooled standard deviation)",
    },
}

UNITS_LINE = ("units: scores, their mean±std and every threshold are cosine similarity, except "
              "the 10-fold protocol's accuracy thresholds (best_thresholds): squared L2 distance "
              "(= 2 - 2·cosine)")


def tar_text(entry: dict[str, Any]) -> str:
    """A TAR at FAR cell: the rate, or n/m where the impostor pairs cannot measure the FAR."""
    return f"{entry['tar']:.4f}" if entry.get("measurable") else "n/m"


def _verification_lines(report: dict) -> list[str]:
    rows = report["verification"]
    fars = list(next(iter(rows.values()))["tar_at_far"])
    tar_heads = " ".join(f"{'TAR@' + far:>10}" for far in fars)
    lines = [(f"  {'verification':<18} {'same/diff':>11} {'accuracy':>16} {'VAL@1e-3':>9} "
              f"{tar_heads} {'EER':>7}")]
    notes = []
    for name, r in rows.items():
        accuracy = f"{r['accuracy_mean']:.4f}±{r['accuracy_std']:.4f}"
        pairs = f"{r['num_genuine_pairs']}/{r['num_impostor_pairs']}"
        val = f"{r['val']:.4f}" + ("" if r["val_measurable"] else "*")
        tars = " ".join(f"{tar_text(r['tar_at_far'][far]):>10}" for far in fars)
        lines.append(f"  {name:<18} {pairs:>11} {accuracy:>16} {val:>9} {tars} "
                     f"{r['eer']:>7.4f}")
        unmeasurable = [far for far, t in r["tar_at_far"].items() if not t["measurable"]]
        if unmeasurable:
            notes.append(f"  n/m: {name} has {r['num_impostor_pairs']} impostor pairs, so the "
                         f"smallest FAR it can measure is {r['min_measurable_far']:.3g}; TAR at "
                         f"FAR {', '.join(unmeasurable)} not measurable")
        if not r["val_measurable"]:
            notes.append(f"  *: {name} VAL@1e-3 {r['val_note']}")
    return lines + notes


def _distribution_lines(report: dict) -> list[str]:
    rows = [(name, "pairs", r["score_distribution"])
            for name, r in report["verification"].items()]
    rows += [(name, "dataset", r) for name, r in report["datasets"].items()]
    lines = [(f"  {'score distribution':<18} {'kind':>7} {'images':>6} {'ids':>5} {'mated':>13} "
              f"{'non-mated':>13} {'d′':>6} {'EER':>7} {'EER thr':>8}")]
    for name, kind, r in rows:
        ids = "—" if r["num_identities"] is None else r["num_identities"]
        mated = f"{r['mated_mean']:.3f}±{r['mated_std']:.3f}"
        nonmated = f"{r['nonmated_mean']:.3f}±{r['nonmated_std']:.3f}"
        lines.append(f"  {name:<18} {kind:>7} {r['num_images']:>6} {ids:>5} {mated:>13} "
                     f"{nonmated:>13} {r['d_prime']:>6.2f} {r['eer']:>7.4f} "
                     f"{r['eer_threshold']:>8.4f}")
    return lines


def print_table(report: dict) -> None:
    model = report["model"]
    head = (f"evaluate: {model['uri']} ({model['input_size']} px, {model['dim']}-d) on "
            f"{report['images']} images in {report['seconds']['embed']} s "
            f"({report['images_per_s']} img/s)")
    lines = [head, f"  {UNITS_LINE}"]
    if report["verification"]:
        lines += _verification_lines(report)
    if report["verification"] or report["datasets"]:
        lines += _distribution_lines(report)
    for c in report["comparisons"]:
        lines.append(f"  {c['b']} vs {c['a']}: W1 mated {c['mated']['wasserstein']:.4f}, "
                     f"non-mated {c['nonmated']['wasserstein']:.4f}; KL mated "
                     f"{c['mated']['kl_a_b']:.4f}, non-mated {c['nonmated']['kl_a_b']:.4f}")
    lines.append(f"  report: {report['report']}, {report['html']}")
    print("\n".join(lines))


def _without_arrays(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("histogram", "rates")}


def compact(report: dict) -> dict:
    """The returned summary: the report without histograms, FMR/FNMR tables and per-fold
    lists."""
    verification = {
        name: {**{k: v for k, v in r.items()
                  if k not in ("accuracies", "best_thresholds", "score_distribution")},
               "score_distribution": _without_arrays(r["score_distribution"])}
        for name, r in report["verification"].items()
    }
    datasets = {name: _without_arrays(r) for name, r in report["datasets"].items()}
    return {**report, "verification": verification, "datasets": datasets}
