"""bench-gan's demographic part (bench): a target filled from the GAN, and what CemiFace keeps.

The selection classifier locates each cell in W (cemiray.models.stylegan_targets) and accepts
or rejects each pulled draw; the independent classifier (other identities, another trunk)
measures the kept set against the target. Then the CemiFace generator makes
`images_per_identity` images of some kept identities (conditioned by E_id's embedding of the
GAN image) and of as many real unseen identities: the independent classifier says how many keep
their identity's group, the judge how separable the identities are."""

from __future__ import annotations

import numpy as np

from cemiray.bench.gan_quality import judged, source_images


def fill_target(cfg, gan, cells_of, target: dict[str, float]) -> dict:
    """Per cell: the kept images (count from the target), the draws it took."""
    from cemiray.eval.seed_quotas import largest_remainder
    from cemiray.models.stylegan_targets import cell_centroids, sample_cell

    calibration = [cfg.seed * 1_000_000 + 500_000 + k for k in range(cfg.calibration)]
    found = cell_centroids(gan, cells_of, calibration)
    cells = list(target)
    missing = [c for c in cells if c not in found]
    if missing:
        raise ValueError(f"target cells {missing} never appear among {cfg.calibration} GAN "
                         f"samples (found {sorted(found)}): no sample can fill them")
    counts = largest_remainder([target[c] for c in cells], cfg.identities)
    kept: dict[str, dict] = {}
    for number, (cell, count) in enumerate(zip(cells, counts, strict=True)):
        images, draws, start = [], 0, (number + 1) * 10_000_000 + cfg.seed * 1_000_000
        while sum(len(i) for i in images) < count:
            if draws > 50 * count + 1000:
                raise RuntimeError(f"cell {cell!r}: {draws} draws kept fewer than {count}")
            seeds = list(range(start + draws, start + draws + 64))
            got, ok, _ = sample_cell(gan, cells_of, cell, found[cell]["w"], seeds,
                                     cfg.condition_psi)
            images.append(got[ok])
            draws += len(seeds)
        kept[cell] = {"images": np.concatenate(images)[:count], "draws": draws,
                      "count": int(count)}
    return {"found": found, "kept": kept}


def generated_images(cfg, pipe, recognizer, inquiry: np.ndarray) -> np.ndarray:
    """`images_per_identity` CemiFace images of each inquiry image (identity-major order)."""
    import torch

    k = cfg.images_per_identity
    ids = torch.as_tensor(recognizer.embed(inquiry)).repeat_interleave(k, dim=0)
    seeds = [cfg.seed * 1_000_000 + i for i in range(len(ids))]
    out = []
    for start in range(0, len(ids), 64):
        out.append(pipe(ids[start:start + 64], cfg.m, seeds[start:start + 64]).images)
    return np.concatenate(out)


def kept_through_generation(cfg, images: np.ndarray, groups: list[str], cells_judge,
                            judge) -> dict:
    """Of each identity's generated images: the share in its group (independent classifier),
    the share of identities at ≥ 95%, and the set's separability in judge space."""
    from cemiray.eval.set_metrics import centre_similarity, fisher_ratio

    k = cfg.images_per_identity
    labels = np.repeat(np.arange(len(groups)), k)
    cells = np.asarray(cells_judge(images)).reshape(len(groups), k)
    share = (cells == np.asarray(groups)[:, None]).mean(1)
    emb, _ = judged(judge, images)
    return {"identities": len(groups), "images": len(images),
            "group_kept_share": float(share.mean()),
            "identities_at_95": float((share >= 0.95).mean()),
            "fisher_ratio": fisher_ratio(emb, labels),
            "centre_similarity": centre_similarity(emb, labels)}


def demographics(cfg, gan, cache: dict) -> dict:
    from cemiray.diffusion.pipeline import load_pipeline
    from cemiray.eval.attributes import cell_labeller
    from cemiray.eval.set_metrics import shares, total_variation
    from cemiray.models.attributes import load_attribute_model
    from cemiray.models.recognizer import load_recognizer
    from cemiray.models.stylegan_targets import mapped, render

    selector = load_attribute_model(cfg.attributes)
    measurer = load_attribute_model(cfg.attributes_judge)
    cells_sel = cell_labeller(selector, [cfg.attribute])
    cells_judge = cell_labeller(measurer, [cfg.attribute])
    spec = next(s for s in selector.specs if s.name == cfg.attribute)
    target = cfg.target or {str(c): 1 / len(spec.classes) for c in spec.classes}

    natural = render(gan, mapped(gan, [cfg.seed * 1_000_000 + k for k in range(cfg.samples)]))
    filled = fill_target(cfg, gan, cells_sel, target)
    kept_images = np.concatenate([v["images"] for v in filled["kept"].values()])
    kept_cells = [c for c, v in filled["kept"].items() for _ in range(len(v["images"]))]
    achieved = shares(cells_judge(kept_images))
    draws = sum(v["draws"] for v in filled["kept"].values())
    natural_sel = {c: f["share"] for c, f in filled["found"].items()}
    out = {"attribute": cfg.attribute, "target": target, "identities": len(kept_images),
           "natural_by_selector": natural_sel,
           "natural_by_judge": shares(cells_judge(natural)),
           "achieved_by_judge": achieved,
           "total_variation": total_variation(target, achieved),
           "agreement_selector_judge": float(np.mean(
               np.asarray(cells_judge(kept_images)) == np.asarray(kept_cells))),
           "draws": draws, "rejection_rate": 1 - len(kept_images) / draws,
           "rejection_only_draws": float(max(
               v["count"] / max(natural_sel.get(c, 0), 1e-9)
               for c, v in filled["kept"].items())),
           "per_cell": {c: {"draws": v["draws"], "kept": v["count"]}
                        for c, v in filled["kept"].items()}}

    # CemiFace's images of some kept identities, and of as many real unseen identities
    pipe = load_pipeline(cfg.generator)
    recognizer = load_recognizer(cfg.recognizer)
    per_cell = max(1, cfg.generated_identities // len(target))
    chosen = [(c, v["images"][:per_cell]) for c, v in filled["kept"].items()]
    gan_inquiry = np.concatenate([im for _, im in chosen])
    gan_groups = [c for c, im in chosen for _ in range(len(im))]
    out["generated_gan"] = kept_through_generation(
        cfg, generated_images(cfg, pipe, recognizer, gan_inquiry), gan_groups, cells_judge,
        cache["judge"])
    real_images, _ = source_images(cfg.real)
    rows = _real_rows(cfg.real, len(gan_inquiry), cfg.attribute)
    out["generated_real"] = kept_through_generation(
        cfg, generated_images(cfg, pipe, recognizer, real_images[:len(rows)]),
        [str(r) for r in rows], cells_judge, cache["judge"])
    return out


def _real_rows(uri: str, n: int, attribute: str) -> list:
    """The true `attribute` of the first n rows of a ToyFaces-like source."""
    from cemiray.data.sources import Source
    from cemiray.eval.attributes import truth_value

    values = []
    for row in Source.parse(uri).iter_rows():
        values.append(truth_value(row, attribute))
        if len(values) == n:
            break
    return values
