"""dlib's ResNet as the independent judge for real faces: on ORL photos it separates people it
was never tuned for, and its similarity scale is the documented map of dlib's distance."""

from __future__ import annotations

import numpy as np
import pytest

from cemiray.data.images import decode_image
from cemiray.data.orl import read_orl
from cemiray.eval.verification import equal_error_rate
from cemiray.models.dlib_recognizer import SCALE, THRESHOLD, DlibRecognizer
from cemiray.models.recognizer import load_recognizer


@pytest.fixture(scope="module")
def judge() -> DlibRecognizer:
    return load_recognizer("dlib")


def test_dlib_separates_orl_people(judge: DlibRecognizer, orl_root) -> None:
    rows = [r for r in read_orl(str(orl_root), subjects=range(1, 11)) if r["sample"] < 4]
    images = np.stack([decode_image(r["image"]) for r in rows])
    labels = np.array([r["label"] for r in rows])
    emb = judge.embed(images)
    assert emb.shape == (40, 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = judge.to_similarity(emb @ emb.T)
    upper = np.triu_indices(len(rows), 1)
    same = (labels[:, None] == labels[None])[upper]
    mated, nonmated = sim[upper][same], sim[upper][~same]
    # measured: mated ≈ 0.8, non-mated ≈ 0.2, EER ≈ 0.07 on 20 subjects
    assert mated.mean() > 0.6
    assert nonmated.mean() < 0.4
    eer, _ = equal_error_rate(mated, nonmated)
    assert eer < 0.2, eer
    again = judge.embed(images[:3])
    assert np.array_equal(again, emb[:3])


def test_similarity_is_the_documented_map_of_dlib_distance(judge: DlibRecognizer) -> None:
    distances = np.array([0.0, THRESHOLD, np.sqrt(SCALE)])
    cosine = 1.0 - distances**2 / 2.0
    assert judge.to_similarity(cosine) == pytest.approx([1.0, 0.5, 0.0])
    assert len(judge.content_hash) == 64
    with pytest.raises(TypeError, match="not differentiable"):
        import torch

        judge.embed_tensor(torch.zeros(1, 3, 32, 32, requires_grad=True))
