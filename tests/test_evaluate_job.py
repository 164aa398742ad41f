"""`cemiray evaluate` end to end on a real local Ray cluster: a tiny recogniser folder, a ToyFaces
verification .bin, a ToyFaces set and the ORL database; plus the embedding pass's row order."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from cemiray.apps.evaluate import EvaluateConfig, run
from cemiray.data import storage
from cemiray.data.images import decode_image, encode_png
from cemiray.data.sources import parse_source
from cemiray.data.toyfaces import ToyFacesWorld, verification_pairs
from cemiray.data.verification_bin import load_bin, write_bin
from cemiray.eval.verification import embed_with_flip, evaluate_pairs
from cemiray.models import get_backbone
from cemiray.models.recognizer import load_recognizer
from cemiray.models.serialization import save_model_folder

TOYFACES = "toyfaces:?ids=0-7&samples=4&size=32"


def write_toyfaces_bin(url: str, identities: range, samples: int, num_pairs: int) -> None:
    """A verification .bin of ToyFaces pairs, laid out as arcface_torch's: images 2i, 2i+1."""
    pairs = verification_pairs(list(identities), samples, num_pairs, seed=0)
    ids = [member[0] for a, b, _ in pairs for member in (a, b)]
    samples_ = [member[1] for a, b, _ in pairs for member in (a, b)]
    images, _ = ToyFacesWorld(seed=0, size=32).render_batch(ids, samples_)
    write_bin(url, [encode_png(image) for image in images], [same for _, _, same in pairs])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    import torch

    root = tmp_path_factory.mktemp("evaluate_inputs")
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=16, num_features=32)
    model_url = str(root / "recognizer")
    save_model_folder(model, model_url, model.config)
    bin_path = str(root / "toy_test.bin")
    write_toyfaces_bin(bin_path, range(20, 30), samples=4, num_pairs=100)
    return {"root": root, "model": model_url, "bin": bin_path}


@pytest.fixture(scope="module")
def evaluated(ray_cluster, inputs, orl_root) -> dict:
    out = str(inputs["root"] / "run")
    cfg = EvaluateConfig(out=out, model=inputs["model"], verification=[inputs["bin"]],
                         datasets=[TOYFACES, f"orl:{orl_root}"], reference=f"orl:{orl_root}",
                         save_embeddings=True, batch_size=32, rows_per_read_task=200,
                         num_actors_min=1, num_actors_max=2, cpus_per_actor=0.5)
    summary = run(cfg)
    return {"out": out, "summary": summary,
            "report": json.loads(storage.read_text(storage.join(out, "report.json")))}


def test_report_holds_every_figure(evaluated) -> None:
    report = evaluated["report"]
    assert set(report["verification"]) == {"toy_test"}
    v = report["verification"]["toy_test"]
    assert v["num_pairs"] == 100 and len(v["accuracies"]) == 10
    for key in ("accuracy_mean", "val", "far", "eer"):
        assert 0.0 <= v[key] <= 1.0, key
    assert v["accuracy_std"] >= 0 and set(v["tar_at_far"]) == {"0.01", "0.001", "0.0001"}

    datasets = report["datasets"]
    assert set(datasets) == {"toyfaces", "orl_faces"}
    sizes = {name: (r["num_images"], r["num_identities"]) for name, r in datasets.items()}
    assert sizes == {"toyfaces": (32, 8), "orl_faces": (400, 40)}
    for r in datasets.values():
        per_identity = r["num_images"] // r["num_identities"]
        assert r["num_mated"] == r["num_identities"] * math.comb(per_identity, 2)
        assert math.isfinite(r["d_prime"]) and r["d_prime"] >= 0
        assert 0.0 <= r["eer"] <= 1.0
        assert [t["threshold"] for t in r["rates"]] == [0.2, 0.3, 0.4, 0.5]
        assert sum(r["histogram"]["mated"]) == r["num_mated"]

    (comparison,) = report["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("orl_faces", "toyfaces")
    for side in ("mated", "nonmated"):
        assert comparison[side]["wasserstein"] > 0
        assert comparison[side]["kl_a_b"] >= 0 and comparison[side]["kl_b_a"] >= 0

    assert report["images"] == 200 + 32 + 400
    for key in ("scores", "det", "scores_toyfaces", "scores_orl_faces"):
        with Image.open(io.BytesIO(storage.read_bytes(report["files"][key]))) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100
    assert evaluated["summary"]["verification"]["toy_test"]["accuracy_mean"] == v["accuracy_mean"]
    assert "histogram" not in evaluated["summary"]["datasets"]["orl_faces"]


def saved(evaluated, name: str) -> tuple[np.ndarray, np.ndarray]:
    url = evaluated["report"]["files"][f"embeddings_{name}"]
    with np.load(io.BytesIO(storage.read_bytes(url))) as f:
        return f["embeddings"], f["labels"]


def test_ray_embeddings_equal_in_process_embeddings(evaluated, inputs, orl_root) -> None:
    recognizer = load_recognizer(inputs["model"])

    rows = list(parse_source(TOYFACES).iter_rows())
    images = np.stack([decode_image(r["image"]) for r in rows])
    embeddings, labels = saved(evaluated, "toyfaces")
    np.testing.assert_array_equal(labels, [r["label"] for r in rows])
    np.testing.assert_allclose(embeddings, recognizer.embed(images), atol=1e-5)

    orl_rows = list(parse_source(f"orl:{orl_root}").iter_rows())
    orl_embeddings, orl_labels = saved(evaluated, "orl_faces")
    np.testing.assert_array_equal(orl_labels, [r["label"] for r in orl_rows])
    across_parts = np.stack([decode_image(r["image"]) for r in orl_rows[190:210]])  # 2 tasks
    np.testing.assert_allclose(orl_embeddings[190:210], recognizer.embed(across_parts), atol=1e-5)

    encoded, issame = load_bin(inputs["bin"])
    last_pairs = np.stack([decode_image(b) for b in encoded[-40:]])
    bin_embeddings, _ = saved(evaluated, "toy_test")
    np.testing.assert_allclose(bin_embeddings[-40:], embed_with_flip(recognizer, last_pairs),
                               atol=1e-5)
    reported = evaluated["report"]["verification"]["toy_test"]
    recomputed = evaluate_pairs(bin_embeddings[0::2], bin_embeddings[1::2], issame)
    assert reported["accuracy_mean"] == recomputed["accuracy_mean"]
    assert reported["eer"] == recomputed["eer"]


def test_collect_embeddings_sorts_by_index_and_refuses_repeats(ray_cluster) -> None:
    import ray.data

    from cemiray.pipeline.embed import collect_embeddings

    order = np.random.default_rng(0).permutation(50)
    items = [{"index": int(i), "label": int(i) % 5, "embedding": np.full(3, i, np.float32)}
             for i in order]
    shuffled = ray.data.from_items(items, override_num_blocks=5)
    embeddings, labels, extras = collect_embeddings(shuffled)
    np.testing.assert_array_equal(extras["index"], np.arange(50))
    np.testing.assert_array_equal(embeddings[:, 0], np.arange(50))
    np.testing.assert_array_equal(labels, np.arange(50) % 5)
    with pytest.raises(ValueError, match=r"index \[7\] came back more than once"):
        collect_embeddings(ray.data.from_items(items + [items[list(order).index(7)]]))


def test_bad_inputs_fail_before_ray_work(inputs, tmp_path) -> None:
    base = {"out": str(tmp_path / "out"), "model": inputs["model"], "reference": None,
                "verification": [], "datasets": [TOYFACES]}
    missing_model = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        run(EvaluateConfig(**{**base, "model": missing_model}))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        run(EvaluateConfig(**{**base, "verification": [str(tmp_path / "missing.bin")]}))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(EvaluateConfig(**{**base, "datasets": [f"parquet:{tmp_path / 'nowhere'}"]}))
    with pytest.raises(ValueError, match="list it under `verification`"):
        run(EvaluateConfig(**{**base, "datasets": [f"bin:{inputs['bin']}"]}))
    one_kind_fold = str(tmp_path / "one_kind_fold.bin")
    blank = encode_png(np.zeros((8, 8, 3), np.uint8))
    write_bin(one_kind_fold, [blank] * 40, [True, False, False, False] + [True, False] * 8)
    with pytest.raises(ValueError, match=r"one_kind_fold.bin: fold 1 of 10"):
        run(EvaluateConfig(**{**base, "verification": [one_kind_fold]}))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run(EvaluateConfig(**{**base, "datasets": []}))
    assert not storage.exists(str(tmp_path / "out"))


def test_config_reads_bare_kinds_and_checks_the_actor_pool() -> None:
    from cemiray.runtime.config import ConfigError, load_config

    cfg = load_config(EvaluateConfig, None, ["model=m", "reference=orl:", "verification=[]",
                                             "datasets=[orl:, 'toyfaces:?ids=0-7&samples=4']"])
    assert (cfg.datasets, cfg.reference) == (["orl:", "toyfaces:?ids=0-7&samples=4"], "orl:")
    with pytest.raises(ConfigError, match="num_actors_max=1 is below num_actors_min=2"):
        load_config(EvaluateConfig, None, ["model=m", "datasets=[orl:]", "num_actors_min=2",
                                           "num_actors_max=1"])
