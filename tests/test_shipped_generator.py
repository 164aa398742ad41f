"""A guard on the shipped generator's similarity control, measured by the independent judge
(never by E_id, which conditioned and trained it): on 16 identities no model saw, the judge's
mean similarity to the inquiry rises with the requested m and m = 1 beats m = 0 by a margin."""

from __future__ import annotations

import numpy as np
import torch

from cemiray.assets import TOYFACES_GENERATOR, TOYFACES_JUDGE, TOYFACES_RECOGNIZER
from cemiray.data.toyfaces import NEW_IDENTITY_OFFSET, ToyFacesWorld
from cemiray.diffusion.pipeline import load_pipeline
from cemiray.eval.control import control_report
from cemiray.models.hashing import model_hash
from cemiray.models.recognizer import load_recognizer

# Measured on two disjoint sets of 16 identities: judge means at m = 0, 0.5, 1 of
# −0.01, 0.43, 0.61 and −0.15, 0.51, 0.69 (m = 1 − m = 0: 0.61 and 0.84).
MARGIN = 0.4


def test_the_judge_sees_the_shipped_generator_obey_m() -> None:
    torch.manual_seed(0)
    world = ToyFacesWorld(seed=0, size=32)
    first = NEW_IDENTITY_OFFSET + 5000
    inquiry = world.render_batch(list(range(first, first + 16)), [0] * 16)[0]
    report = control_report(load_pipeline(TOYFACES_GENERATOR),
                            load_recognizer(TOYFACES_RECOGNIZER), inquiry,
                            targets=(0.0, 0.5, 1.0), steps=20, samplers=(), closed_loop=False,
                            judge=load_recognizer(TOYFACES_JUDGE))
    judged = [row["mean"] for row in report.metrics["judge"]["per_target"]]
    assert np.all(np.diff(judged) > 0), judged
    assert judged[-1] - judged[0] >= MARGIN, judged
    judge_hash = report.metrics["judge"]["model_hash"]
    assert judge_hash == model_hash(TOYFACES_JUDGE) != model_hash(TOYFACES_RECOGNIZER)
    assert report.metrics["judge"]["per_target"][0]["n"] == 16


def test_the_control_benchmark_draws_new_identities_of_its_training_world() -> None:
    """`jobs/bench_generator.py` evaluates on ToyFaces' new identities (1,000,000 on), which no
    model trained on, of the generator's training world."""
    from cemiray.bench.generator import DATA, inquiry_images

    images = inquiry_images(DATA, 2, 32, sample=1)
    expected = ToyFacesWorld(seed=0, size=32).render_batch(
        [NEW_IDENTITY_OFFSET, NEW_IDENTITY_OFFSET + 1], [1, 1])[0]
    assert np.array_equal(images, expected)
