"""CemiFace's Table 1 analysis: grouping by similarity to the class centre on crafted embeddings
(exact memberships, counts, errors), and `analyze-centres` end to end on the session's Ray
cluster with a head exported by train-fr's own export function."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cemiray.apps.analyze_centres import AnalyzeCentresConfig, run
from cemiray.data import storage
from cemiray.data.images import decode_image
from cemiray.data.parquet_shards import iter_rows
from cemiray.eval.centre_groups import (
    CentreError,
    centre_similarity,
    group_by_centre_similarity,
    load_centres,
    split_by_similarity,
)
from cemiray.models import get_margin_head, save_model_folder
from cemiray.models.recognizer import load_recognizer
from cemiray.train.fr import fr_config


def crafted(cosines: list[list[float]], dim: int = 8):
    """Embeddings whose cosine to centre e_label is given exactly: row = cos·e_label + sin·u,
    u a unit vector orthogonal to every centre. Returns (embeddings, labels, centres)."""
    n_ids = len(cosines)
    centres = np.eye(n_ids, dim)
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for label, values in enumerate(cosines):
        for c in values:
            u = np.zeros(dim)
            u[n_ids:] = rng.normal(size=dim - n_ids)
            u /= np.linalg.norm(u)
            rows.append(c * centres[label] + np.sqrt(1 - c * c) * u)
            labels.append(label)
    return np.array(rows) * 3.0, np.array(labels), centres * 2.0


COSINES = [[0.9, 0.5, 0.7, 0.1, 0.3, 0.8],
           [0.2, 0.95, 0.6, 0.4, 0.0, 0.85]]


def test_per_identity_groups_are_exact() -> None:
    embeddings, labels, centres = crafted(COSINES)
    groups = group_by_centre_similarity(embeddings, labels, k=3, centres=centres)
    np.testing.assert_allclose(groups.similarity, np.concatenate(COSINES), atol=1e-12)
    # identity 0: 0.1, 0.3 | 0.5, 0.7 | 0.8, 0.9; identity 1: 0.0, 0.2 | 0.4, 0.6 | 0.85, 0.95
    assert groups.members(0).tolist() == [3, 4, 6, 10]
    assert groups.members(1).tolist() == [1, 2, 8, 9]
    assert groups.members(2).tolist() == [0, 5, 7, 11]
    assert groups.unassigned == 0 and groups.centre_source == "head"
    table = groups.summary()
    assert [r["images"] for r in table] == [4, 4, 4]
    assert [r["identities"] for r in table] == [2, 2, 2]
    assert table[0]["mean_similarity"] == pytest.approx((0.1 + 0.3 + 0.0 + 0.2) / 4)
    assert table[2]["std_similarity"] == pytest.approx(np.std([0.9, 0.8, 0.95, 0.85]))
    means = [r["mean_similarity"] for r in table]
    assert means == sorted(means)


def test_per_identity_remainder_is_left_out_at_even_ranks() -> None:
    similarity = np.array([0.7, 0.1, 0.6, 0.2, 0.5, 0.3, 0.4])  # ranks: 6 0 5 1 4 2 3
    groups = split_by_similarity(similarity, np.zeros(7, dtype=int), k=3)
    # 7 images, k=3: 2 per group; rank 3 (0.4, index 6) is left out
    assert groups.tolist() == [2, 0, 2, 0, 1, 1, -1]
    counts = np.bincount(groups[groups >= 0], minlength=3)
    assert counts.tolist() == [2, 2, 2]


def test_global_split_cuts_at_quantiles() -> None:
    similarity = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    groups = split_by_similarity(similarity, labels, k=2, split="global")
    assert groups.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    uneven = split_by_similarity(np.array([0.5, 0.1, 0.9, 0.3, 0.7]), np.zeros(5, int), 2,
                                 split="global")
    assert uneven.tolist() == [0, 0, 1, 0, 1]  # rank * k // n: sizes 3 and 2


def test_identity_mean_centres_without_a_head() -> None:
    c, u = np.eye(4)[0], np.eye(4)[1]
    t = 0.75
    embeddings = np.stack([c + t * u, c - t * u, np.eye(4)[2] + 0.1 * u, np.eye(4)[2] - 0.1 * u])
    groups = group_by_centre_similarity(embeddings, np.array([5, 5, 9, 9]), k=2)
    expected = [1 / np.sqrt(1 + t * t)] * 2 + [1 / np.sqrt(1 + 0.01)] * 2
    np.testing.assert_allclose(groups.similarity, expected, atol=1e-12)
    assert groups.centre_source == "identity_mean"
    assert groups.group.tolist() == [0, 1, 0, 1]  # ties keep input order


def test_bad_input_gives_clear_errors() -> None:
    embeddings, labels, centres = crafted(COSINES)
    with pytest.raises(CentreError, match="k=1"):
        group_by_centre_similarity(embeddings, labels, k=1, centres=centres)
    with pytest.raises(CentreError, match=r"k=7 is larger than the images of identities \[0, 1\]"):
        group_by_centre_similarity(embeddings, labels, k=7, centres=centres)
    with pytest.raises(CentreError, match=r"labels \[2\] have no centre: the head holds 2"):
        centre_similarity(embeddings, np.where(labels == 1, 2, 0), centres)
    with pytest.raises(CentreError, match="dimensions"):
        centre_similarity(embeddings, labels, centres[:, :4])
    with pytest.raises(CentreError, match="split='halves'"):
        group_by_centre_similarity(embeddings, labels, k=2, split="halves")
    with pytest.raises(CentreError, match=">= 0"):
        centre_similarity(embeddings, labels - 1)
    with pytest.raises(CentreError, match="one value per embedding"):
        centre_similarity(embeddings, labels[:-1])
    broken = embeddings.copy()
    broken[4, 2] = np.nan
    with pytest.raises(CentreError, match=r"rows \[4\] hold NaN"):
        centre_similarity(broken, labels)
    with pytest.raises(CentreError, match="need at least k"):
        split_by_similarity(np.array([0.1, 0.2]), np.array([0, 1]), k=3, split="global")


def test_load_centres_reads_head_folder_safetensors_and_npy(tmp_path) -> None:
    torch.manual_seed(0)
    head = get_margin_head("cosface", num_classes=5, embedding_dim=16)
    save_model_folder(head, str(tmp_path / "head"), head.config)
    expected = head.centers().numpy()
    np.testing.assert_allclose(load_centres(str(tmp_path / "head")), expected, atol=1e-6)
    save_file({"centres": head.weight.detach()}, str(tmp_path / "c.safetensors"))
    np.testing.assert_allclose(load_centres(str(tmp_path / "c.safetensors")), expected, atol=1e-6)
    np.save(tmp_path / "c.npy", head.weight.detach().numpy())
    np.testing.assert_allclose(load_centres(str(tmp_path / "c.npy")), expected, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no_head"):
        load_centres(str(tmp_path / "no_head"))
    save_file({"a": torch.ones(2, 3), "b": torch.ones(2, 3)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CentreError, match="no 'weight' tensor"):
        load_centres(str(tmp_path / "two.safetensors"))


def test_config_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="backbone"):
        AnalyzeCentresConfig(fr={"backbone": "iresnet50"})
    with pytest.raises(ValueError, match="bogus"):
        AnalyzeCentresConfig(fr={"bogus": 1})
    with pytest.raises(ValueError, match="verification: required"):
        AnalyzeCentresConfig(data="parquet:/nowhere")
    with pytest.raises(ValueError, match="overlap"):
        AnalyzeCentresConfig(holdout_first=450)
    assert AnalyzeCentresConfig().holdout_ids() == range(500, 600)
    with pytest.raises(ValueError, match="must be even"):
        AnalyzeCentresConfig(holdout_pairs=101)
    with pytest.raises(ValueError, match="margin"):
        AnalyzeCentresConfig(fr={"margin": "wide"})
    recipe = AnalyzeCentresConfig(fr={"margin": 0.35}).fr_recipe()
    group = fr_config(recipe, out="o", data="toyfaces:?ids=0-1&samples=2", max_steps=5)
    assert (group.margin, group.max_steps, group.eval_every, group.width) == (0.35, 5, 10**9, 16)


DATA = "toyfaces:?seed=0&ids=0-19&samples=8&size=16"
SMALL = {"input_size": 16, "width": 8, "embedding_dim": 32}


def base_model(folder: str) -> None:
    """A tiny recogniser + cosface head trained in-process on DATA, exported by train-fr's own
    export (backbone/ and head/ folders), so the head's rows are the labels' centres."""
    from cemiray.data.sources import parse_source
    from cemiray.train.face_data import decode_batch
    from cemiray.train.fr import TrainFRConfig, build_model, export_model

    torch.manual_seed(0)
    cfg = TrainFRConfig(out=folder, data=DATA, lr=0.05, **SMALL)
    rows = list(parse_source(DATA).iter_rows())
    x = decode_batch([r["image"] for r in rows], 16)
    y = torch.tensor([r["label"] for r in rows])
    model = build_model(cfg, 20)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    for step in range(30):
        batch = torch.randperm(len(rows))[:32]
        loss = model(x[batch], y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    export_model(model, cfg, 20, {"steps": 30})


@pytest.mark.ray
@pytest.mark.slow  # 1 min of FR trainings; the grouping arithmetic above runs on every suite
def test_analyze_centres_end_to_end(ray_cluster, tmp_path) -> None:
    base_model(str(tmp_path / "base"))
    out = tmp_path / "analysis"
    cfg = AnalyzeCentresConfig(
        out=str(out), data=DATA, model=str(tmp_path / "base" / "backbone"),
        head=str(tmp_path / "base" / "head"), k=2, holdout_identities=10, holdout_samples=8,
        holdout_pairs=100, max_steps=3, batch_size=16, warmup_steps=0, rows_per_task=80,
        embed_batch_size=64, **SMALL,
        distributed={"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1,
                     "zero_stage": 1, "storage_path": str(tmp_path / "ray_results")},
    )
    returned = run(cfg)
    report = json.loads((out / "centres.json").read_text())
    assert report["groups"] == returned["groups"]
    groups = report["groups"]
    assert [g["group"] for g in groups] == [0, 1]
    assert groups[0]["mean_similarity"] < groups[1]["mean_similarity"]
    assert [(g["images"], g["identities"]) for g in groups] == [(80, 20), (80, 20)]
    for g in groups:
        assert 0.0 <= g["accuracy"] <= 1.0 and g["accuracy_std"] >= 0 and g["steps"] == 3
    assert report["centres"] == "head" and report["unassigned"] == 0
    assert report["holdout"]["identities"] == [20, 29] and report["holdout"]["pairs"] == 100

    # The shards hold what the table says: every image once, 4 per identity per group, the
    # per-identity cut respected, and similarities that re-embedding reproduces.
    recognizer = load_recognizer(str(tmp_path / "base" / "backbone"))
    centres = load_centres(str(tmp_path / "base" / "head"))
    seen: list[int] = []
    per_group = []
    for g in range(2):
        rows = list(iter_rows(str(out / "groups" / str(g))))
        seen += [r["source_index"] for r in rows]
        assert np.bincount([r["label"] for r in rows]).tolist() == [4] * 20
        images = np.stack([decode_image(r["image"]) for r in rows])
        sims = np.einsum("nd,nd->n", recognizer.embed(images),
                         centres[[r["source_label"] for r in rows]])
        np.testing.assert_allclose(sims, [r["similarity"] for r in rows], atol=1e-4)
        assert np.mean(sims) == pytest.approx(groups[g]["mean_similarity"], abs=1e-4)
        per_group.append({r["source_label"]: [] for r in rows})
        for r in rows:
            per_group[g][r["source_label"]].append(r["similarity"])
    assert sorted(seen) == list(range(160))
    for label in range(20):
        assert max(per_group[0][label]) <= min(per_group[1][label])
    assert storage.exists(str(out / "fr" / "1" / "backbone" / "config.json"))


def test_job_checks_model_and_head_before_any_ray_work(tmp_path) -> None:
    from cemiray.apps.analyze_centres import check_inputs
    from cemiray.models import get_backbone

    model = get_backbone("iresnet18", input_size=16, width=8, num_features=32)
    save_model_folder(model, str(tmp_path / "backbone"), model.config)
    for name, classes, dim in (("few", 10, 32), ("narrow", 20, 16)):
        head = get_margin_head("cosface", num_classes=classes, embedding_dim=dim)
        save_model_folder(head, str(tmp_path / name), head.config)
    common = {"data": DATA, "model": str(tmp_path / "backbone")}
    with pytest.raises(CentreError, match=r"labels 10-19 have no centre"):
        check_inputs(AnalyzeCentresConfig(head=str(tmp_path / "few"), **common))
    with pytest.raises(CentreError, match="16 dimensions but .* embeds in 32"):
        check_inputs(AnalyzeCentresConfig(head=str(tmp_path / "narrow"), **common))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        check_inputs(AnalyzeCentresConfig(verification=str(tmp_path / "missing.bin"), **common))
