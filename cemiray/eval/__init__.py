"""Evaluation (eval): verification, score distributions, control metrics, statistics; no Ray.

Evaluation protocols and reports: 1:1 verification (arcface_torch protocol) and mated /
non-mated score distributions (GANDiffFace)."""

from cemiray.eval.score_distributions import (
    ScoreReport,
    compare_reports,
    distribution_distance,
    mated_nonmated_scores,
    plot_det,
    plot_distributions,
    save_report_json,
    score_report,
    separation_summary,
)
from cemiray.eval.verification import (
    embed_with_flip,
    equal_error_rate,
    evaluate_pairs,
    evaluate_verification_set,
    tar_at_far,
)

__all__ = [
    "ScoreReport",
    "compare_reports",
    "distribution_distance",
    "embed_with_flip",
    "equal_error_rate",
    "evaluate_pairs",
    "evaluate_verification_set",
    "mated_nonmated_scores",
    "plot_det",
    "plot_distributions",
    "save_report_json",
    "score_report",
    "separation_summary",
    "tar_at_far",
]
