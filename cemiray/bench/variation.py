"""`cemiray bench-variation` (bench): requested against measured variation, by independent models.

The variation-conditioned CemiFace generator is asked, for identities nobody trained on (their
canonical frontal image is the inquiry), for one attribute at a time with the others left
unspecified: each binary attribute absent and present, each continuous one at `levels` values
across its trained range, and nothing at all (the reference), every request of an identity from
the same noise seed at the same m. What the images show is measured by models that played no
part in making them: the independent attribute estimator (`attributes_judge`) and the
independent judge (identity kept: its similarity to the inquiry against the reference's).

    cemiray bench-variation generator=runs/gen_variation/generator results=docs/results/variation.json

Figures per attribute: binary — share present when requested, share absent when requested
absent (goal ≥ 0.9 each), share present with nothing requested; continuous — Pearson correlation
of measured on requested (goal ≥ 0.9), slope and mean absolute error; and the judge's mean
similarity drop against no variation (goal ≤ 0.05). The estimator's own reading of real images of
the same identities (against the renderer's truth) is given beside: the ceiling of what it can
confirm.
"""

from __future__ import annotations

import json
import time

import numpy as np
from pydantic import Field

from cemiray.assets import TOYFACES_ATTRIBUTES_JUDGE, TOYFACES_JUDGE, TOYFACES_RECOGNIZER
from cemiray.runtime.config import JobConfig

GOALS = {"binary_share": 0.9, "continuous_correlation": 0.9, "identity_drop": 0.05}


class BenchVariationConfig(JobConfig):
    out: str = "runs/bench_variation"
    results: str | None = Field(None, description="also write the JSON here")
    generator: str = Field(..., description="a variation-conditioned CemiFace pipeline folder "
                           "(train-gen variation=[...])")
    recognizer: str = Field(TOYFACES_RECOGNIZER, description="E_id that conditions it")
    judge: str = Field(TOYFACES_JUDGE, description="independent recogniser: identity kept")
    estimator: str = Field(TOYFACES_ATTRIBUTES_JUDGE, description="independent attribute "
                           "predictor: what the images show")
    world_seed: int = 0
    first_identity: int = Field(60_000, ge=0, description="identities first_identity.. are "
                                "the inquiries (outside every shipped model's training range)")
    identities: int = Field(50, ge=2)
    real_samples: int = Field(10, ge=1, description="real images per identity for the "
                              "estimator's ceiling")
    m: float = Field(0.7, ge=-1, le=1)
    levels: int = Field(5, ge=2, description="requested values per continuous attribute")
    attributes: list[str] | None = Field(None, description="a subset of the generator's "
                                         "attributes (default: all it has and the estimator "
                                         "reads)")
    steps: int = Field(20, ge=1)
    sampler: str = "ddim"
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    grid_rows: int = Field(8, ge=0)


def requests_for(spec, names: list[str], levels: int) -> list[tuple[str, dict | None, float]]:
    """(attribute, request, requested value) per column: nothing, then each attribute's values."""
    from cemiray.diffusion.variation import BINARY

    out: list[tuple[str, dict | None, float]] = [("none", None, float("nan"))]
    for a in spec.attributes:
        if a.name not in names:
            continue
        values = [0.0, 1.0] if a.kind == BINARY else np.linspace(a.low, a.high, levels).tolist()
        for v in values:
            out.append((a.name, {a.name: bool(v) if a.kind == BINARY else float(v)}, float(v)))
    return out


def measure(kinds: dict, requested: dict, measured: dict, judged: dict, none_sim: np.ndarray
            ) -> dict:
    """Per attribute: binary shares or continuous correlation, and the identity drop."""
    out = {}
    for name, kind in kinds.items():
        req, got = np.asarray(requested[name]), np.asarray(measured[name], dtype=np.float64)
        sims = np.asarray(judged[name])  # identities × values
        drop = float((none_sim[:, None] - sims).mean())
        if kind == "binary":
            present = got[req == 1.0] == 1.0
            absent = got[req == 0.0] == 0.0
            row = {"kind": kind, "present_when_requested": float(present.mean()),
                   "absent_when_requested_absent": float(absent.mean())}
        else:
            corr = float(np.corrcoef(req, got)[0, 1]) if got.std() > 0 else 0.0
            slope = float(np.polyfit(req, got, 1)[0])
            row = {"kind": kind, "correlation": corr, "slope": slope,
                   "mae": float(np.abs(got - req).mean()),
                   "requested": sorted(set(np.round(req, 4).tolist()))}
        row["judge_similarity"] = float(sims.mean())
        row["identity_drop"] = drop
        out[name] = row
    return out


def estimator_ceiling(estimator, world, identities: list[int], samples: int, names: list[str],
                      kinds: dict, judge=None, judge_inquiry: np.ndarray | None = None) -> dict:
    """The estimator on real images of these identities against the renderer's truth; with the
    judge, what a binary attribute costs real images too: their mean similarity to the inquiry
    with the attribute present minus absent."""
    from cemiray.eval.attributes import predict_images

    ids = [i for i in identities for _ in range(samples)]
    images, nuisances = world.render_batch(ids, [s for _ in identities for s in range(samples)])
    pred = predict_images(estimator, images)
    sims = None
    if judge is not None:
        sims = np.einsum("nd,nd->n", judge.embed(images), np.repeat(judge_inquiry, samples, 0))
    out = {}
    for name in names:
        truth = np.array([float(n[name]) for n in nuisances])
        got = np.asarray(pred[name], dtype=np.float64)
        if kinds[name] == "binary":
            out[name] = {"accuracy": float((got == truth).mean()),
                         "present_share_real": float(truth.mean())}
            if sims is not None and 0 < truth.sum() < len(truth):
                out[name]["real_identity_drop"] = float(sims[truth == 0].mean()
                                                        - sims[truth == 1].mean())
        else:
            out[name] = {"correlation": float(np.corrcoef(truth, got)[0, 1]),
                         "mae": float(np.abs(truth - got).mean())}
    return out


def run(cfg: BenchVariationConfig) -> dict:
    from cemiray.bench.common import write_result
    from cemiray.data import storage
    from cemiray.data.toyfaces import ToyFacesWorld
    from cemiray.diffusion import load_pipeline
    from cemiray.diffusion.pipeline import identity_embeddings_from_images
    from cemiray.eval.attributes import predict_images
    from cemiray.eval.control import save_labelled_grid
    from cemiray.models.attributes import CONTINUOUS, load_attribute_model
    from cemiray.models.recognizer import load_recognizer

    t0 = time.perf_counter()
    pipe = load_pipeline(cfg.generator)
    spec = pipe.condition_encoder.variation
    if spec is None:
        raise ValueError(f"generator {cfg.generator}: its condition encoder has no variation "
                         f"spec; train one with train-gen variation=[...]")
    estimator = load_attribute_model(cfg.estimator)
    readable = {s.name: s for s in estimator.specs}
    names = cfg.attributes or [n for n in spec.names if n in readable]
    unknown = [n for n in names if n not in spec.names or n not in readable]
    if unknown:
        raise ValueError(f"attributes {unknown}: the generator knows {spec.names}, the "
                         f"estimator reads {sorted(readable)}")
    kinds = {a.name: a.kind for a in spec.attributes if a.name in names}
    for name, kind in kinds.items():
        if (kind == "binary") == (readable[name].kind == CONTINUOUS):
            raise ValueError(f"attribute {name}: {kind} to the generator but "
                             f"{readable[name].kind} to the estimator")
    recognizer, judge = load_recognizer(cfg.recognizer), load_recognizer(cfg.judge)
    size = pipe.unet.config.sample_size
    world = ToyFacesWorld(seed=cfg.world_seed, size=size)
    identities = list(range(cfg.first_identity, cfg.first_identity + cfg.identities))
    inquiry = np.stack([world.render_canonical(i) for i in identities])
    ids = identity_embeddings_from_images(recognizer, inquiry)
    columns = requests_for(spec, names, cfg.levels)
    n_id, n_col = len(identities), len(columns)
    print(f"bench-variation: {n_id} identities × {n_col} requests = {n_id * n_col} images at "
          f"m {cfg.m}, {cfg.sampler}-{cfg.steps}", flush=True)

    # image (i, c): identity i, request c, noise seed seed + i (the same for every request)
    flat = [(i, c) for i in range(n_id) for c in range(n_col)]
    images = np.zeros((n_id, n_col, size, size, 3), dtype=np.uint8)
    t_gen = time.perf_counter()
    for start in range(0, len(flat), cfg.batch_size):
        chunk = flat[start:start + cfg.batch_size]
        out = pipe(ids[[i for i, _ in chunk]], cfg.m, [cfg.seed + i for i, _ in chunk],
                   num_inference_steps=cfg.steps, scheduler=cfg.sampler,
                   variation=[columns[c][1] for _, c in chunk])
        for (i, c), image in zip(chunk, out.images, strict=True):
            images[i, c] = image
    gen_s = time.perf_counter() - t_gen
    pred = predict_images(estimator, images.reshape(-1, size, size, 3))
    judge_inq = judge.embed(inquiry)
    judge_img = judge.embed(images.reshape(-1, size, size, 3)).reshape(n_id, n_col, -1)
    sims = np.einsum("icd,id->ic", judge_img, judge_inq)

    requested: dict = {n: [] for n in kinds}
    measured: dict = {n: [] for n in kinds}
    judged: dict = {n: [] for n in kinds}
    none_present = {n: [] for n in kinds}
    for c, (name, _, value) in enumerate(columns):
        got = [pred[n].reshape(n_id, n_col)[:, c] for n in kinds]
        if name == "none":
            for n, g in zip(kinds, got, strict=True):
                none_present[n] = g
            continue
        requested[name].extend([value] * n_id)
        measured[name].extend(pred[name].reshape(n_id, n_col)[:, c].tolist())
        judged[name].append(sims[:, c])
    judged = {n: np.stack(v, axis=1) for n, v in judged.items()}
    per_attribute = measure(kinds, requested, measured, judged, sims[:, 0])
    for n, row in per_attribute.items():
        if row["kind"] == "binary":
            row["present_with_nothing_requested"] = float(
                (np.asarray(none_present[n], dtype=np.float64) == 1.0).mean())
        else:
            row["measured_with_nothing_requested"] = float(
                np.asarray(none_present[n], dtype=np.float64).mean())
    ceiling = estimator_ceiling(estimator, world, identities, cfg.real_samples, list(kinds),
                                kinds, judge, judge_inq)
    binary = [r for r in per_attribute.values() if r["kind"] == "binary"]
    continuous = [r for r in per_attribute.values() if r["kind"] != "binary"]
    checks = {
        "binary_shares": all(min(r["present_when_requested"], r["absent_when_requested_absent"])
                             >= GOALS["binary_share"] for r in binary),
        "continuous_correlations": all(r["correlation"] >= GOALS["continuous_correlation"]
                                       for r in continuous),
        "identity_kept": all(r["identity_drop"] <= GOALS["identity_drop"]
                             for r in per_attribute.values()),
    }
    figures = {
        "per_attribute": per_attribute,
        "estimator_on_real_images": ceiling,
        "judge_similarity_no_variation": float(sims[:, 0].mean()),
        "goals": GOALS, "checks": checks,
        "images": n_id * n_col, "generate_s": round(gen_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "generator_training": _training(cfg.generator),
        "route": pipe.condition_encoder.config.variation_route,
    }
    storage.makedirs(cfg.out)
    if cfg.grid_rows:
        rows = min(cfg.grid_rows, n_id)
        titles = [f"{n} {v:.2g}" if n != "none" else "nothing" for n, _, v in columns]
        save_labelled_grid(images[:rows], titles, storage.join(cfg.out, "variation_grid.png"),
                           inquiry=inquiry[:rows])
    config = cfg.model_dump(mode="json")
    url = write_result(cfg.out, "bench_variation", config, figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    _print(per_attribute, ceiling, checks, float(sims[:, 0].mean()))
    return {"result": url, **checks}


def _training(url: str) -> dict | None:
    from cemiray.data import storage

    path = storage.join(url, "training.json")
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def _print(per_attribute: dict, ceiling: dict, checks: dict, base: float) -> None:
    print(f"judge similarity to the inquiry with nothing requested: {base:.3f}")
    for name, r in per_attribute.items():
        if r["kind"] == "binary":
            what = (f"present {r['present_when_requested']:.3f}  absent "
                    f"{r['absent_when_requested_absent']:.3f}  (unrequested "
                    f"{r['present_with_nothing_requested']:.3f}; estimator on real "
                    f"{ceiling[name]['accuracy']:.3f}"
                    + (f", real images lose {ceiling[name]['real_identity_drop']:+.3f}"
                       if "real_identity_drop" in ceiling[name] else "") + ")")
        else:
            what = (f"corr {r['correlation']:.3f}  slope {r['slope']:.2f}  (estimator on real "
                    f"corr {ceiling[name]['correlation']:.3f})")
        print(f"  {name:15s} {what}  identity drop {r['identity_drop']:+.3f}")
    print("checks: " + ", ".join(f"{k} {'met' if v else 'not met'}" for k, v in checks.items()))
