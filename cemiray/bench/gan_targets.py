"""bench-gan's demographic part (bench): a target filled from the GAN, and what CemiFace keeps.

`cemiray seeds` fills the target from GAN samples: with gan_condition, each sample aimed at a
cell by class-conditional truncation (cemiray.pipeline.seeds.gan_condition), and, for
comparison, by rejection alone from as many unconditional samples; the selection classifier
labels the candidates, the independent classifier (other identities, another trunk) measures
the kept set against the target. Two sizes give the seeds job's time projected to
`project_to` identities. Then the CemiFace generator makes
`images_per_identity` images of some kept identities (conditioned by E_id's embedding of the
GAN image) and of as many real unseen identities: the independent classifier says how many keep
their identity's group, the judge how separable the identities are."""

from __future__ import annotations

import json

import numpy as np

from cemiray.bench.gan_quality import judged, source_images
from cemiray.data import storage


def seeds_run(cfg, target: dict[str, float], identities: int, condition: bool,
              out: str) -> dict:
    """One `cemiray seeds` run that fills `target` from GAN samples (aimed at the cells with
    `condition`, else rejection only): its report and the kept images and groups."""
    from cemiray.data.images import decode_image
    from cemiray.pipeline.seeds.job import run as run_seeds
    from cemiray.pipeline.seeds.table import read_seed_table

    samples = int(np.ceil(identities * cfg.overshoot))
    result = run_seeds(seeds_config(cfg, target, identities, condition, out))
    report = json.loads(storage.read_text(result["report"]))
    table = read_seed_table(result["table"], need_images=True)
    return {"report": report, "seconds": result["seconds"], "candidates": samples,
            "images": np.stack([decode_image(im) for im in table.images]) if len(table) else
            np.zeros((0, 1, 1, 3), np.uint8),
            "groups": [str(g) for g in table.attributes[cfg.attribute]] if len(table) else []}


def seeds_config(cfg, target: dict[str, float], identities: int, condition: bool, out: str):
    from cemiray.pipeline.seeds.job import SeedsConfig

    samples = int(np.ceil(identities * cfg.overshoot))
    return SeedsConfig(
        out=out, recognizer=cfg.recognizer, inquiry=[], gan=cfg.gan, gan_samples=samples,
        generator_seed=cfg.seed * 1_000_000, generator_batch=64,
        attribute_model=cfg.attributes, attributes=[cfg.attribute],
        quotas={cfg.attribute: target}, num_identities=identities, gan_condition=condition,
        gan_condition_psi=cfg.condition_psi, gan_calibration=cfg.calibration,
        leakage_data=cfg.train_data, leakage_threshold=cfg.leakage_threshold,
        uniqueness_threshold=cfg.uniqueness_threshold, require_target=False, batch_size=128)


def projection(small: dict, large: dict, target: int) -> dict:
    """The seeds job's seconds for `target` kept identities from two measured runs: the
    embedding pass (sampling, embedding, labelling) fitted linear in candidates, the filters
    scaled quadratically from the larger run (greedy uniqueness compares with every kept seed),
    plus the larger run's other seconds (start-up, writing)."""
    n1, n2 = small["candidates"], large["candidates"]
    e1, e2 = (r["report"]["seconds"]["embedding_pass"] for r in (small, large))
    slope = (e2 - e1) / (n2 - n1)
    if slope <= 0:  # the two runs within noise of each other: scale the larger in proportion
        slope = e2 / n2
    scale = target / large["report"]["num_identities"]
    n = n2 * scale
    filters = large["report"]["seconds"]["filters"] * scale ** 2
    other = large["seconds"] - e2 - large["report"]["seconds"]["filters"]
    embed = e2 + slope * (n - n2)
    return {"identities": target, "candidates": int(n), "embedding_pass_s": embed,
            "filters_s": filters, "other_s": other, "total_s": embed + filters + other,
            "measured": {str(r["report"]["num_identities"]): {
                "candidates": r["candidates"], "seconds": r["seconds"],
                "embedding_pass_s": r["report"]["seconds"]["embedding_pass"],
                "filters_s": r["report"]["seconds"]["filters"]} for r in (small, large)}}


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
            "identities_majority_kept": float((share > 0.5).mean()),
            "fisher_ratio": fisher_ratio(emb, labels),
            "centre_similarity": centre_similarity(emb, labels)}


def demographics(cfg, gan, cache: dict) -> dict:
    from cemiray.diffusion.pipeline import load_pipeline
    from cemiray.eval.attributes import cell_labeller
    from cemiray.eval.set_metrics import shares, total_variation
    from cemiray.models.attributes import load_attribute_model
    from cemiray.models.recognizer import load_recognizer
    from cemiray.models.stylegan_targets import mapped, render
    from cemiray.pipeline.seeds.gan_condition import locate_cells

    selector = load_attribute_model(cfg.attributes)
    cells_judge = cell_labeller(load_attribute_model(cfg.attributes_judge), [cfg.attribute])
    spec = next(s for s in selector.specs if s.name == cfg.attribute)
    target = cfg.target or {str(c): 1 / len(spec.classes) for c in spec.classes}

    # a target cell no GAN sample reaches is refused before any seeds run
    locate_cells(seeds_config(cfg, target, cfg.identities, True, cfg.out).resolved())
    natural = render(gan, mapped(gan, [cfg.seed * 1_000_000 + k for k in range(cfg.samples)]))
    runs = {}
    # rejection-only first: it also warms Ray up before the two timed conditional runs
    for name, identities, condition in (("rejection_only", cfg.identities, False),
                                        ("small", max(4, cfg.identities // 20), True),
                                        ("conditional", cfg.identities, True)):
        runs[name] = seeds_run(cfg, target, identities, condition,
                               storage.join(cfg.out, f"seeds_{name}"))
    out = {"attribute": cfg.attribute, "target": target,
           "natural_by_judge": shares(cells_judge(natural)),
           "projection": projection(runs["small"], runs["conditional"], cfg.project_to)}
    for name in ("conditional", "rejection_only"):
        run = runs[name]
        report, kept = run["report"], len(run["groups"])
        measured = cells_judge(run["images"]) if kept else []
        achieved = shares(measured) if kept else {}
        out[name] = {
            "candidates": run["candidates"], "kept": kept, "seconds": run["seconds"],
            "quotas_filled": report["quotas_filled"], "stages": report["stages"],
            "achieved_by_selector": shares(run["groups"]) if kept else {},
            "achieved_by_judge": achieved,
            "total_variation": total_variation(target, achieved) if kept else None,
            "agreement_selector_judge": float(np.mean(np.asarray(measured) == np.asarray(
                run["groups"]))) if kept else None,
            "rejection_rate": 1 - kept / run["candidates"],
            "gan_condition": report["gan_condition"]}

    # CemiFace's images of some kept identities, and of as many real unseen identities
    pipe = load_pipeline(cfg.generator)
    recognizer = load_recognizer(cfg.recognizer)
    chosen = choose_per_group(runs["conditional"]["groups"], cfg.generated_identities)
    gan_inquiry = runs["conditional"]["images"][chosen]
    gan_groups = [runs["conditional"]["groups"][i] for i in chosen]
    out["generated_gan"] = kept_through_generation(
        cfg, generated_images(cfg, pipe, recognizer, gan_inquiry), gan_groups, cells_judge,
        cache["judge"])
    real_images, _ = source_images(cfg.real)
    rows = _real_rows(cfg.real, len(gan_inquiry), cfg.attribute)
    out["generated_real"] = kept_through_generation(
        cfg, generated_images(cfg, pipe, recognizer, real_images[:len(rows)]),
        [str(r) for r in rows], cells_judge, cache["judge"])
    return out


def choose_per_group(groups: list[str], n: int) -> list[int]:
    """Up to n row numbers, the same number from each group (the first rows of each)."""
    names = sorted(set(groups))
    per = max(1, n // max(1, len(names)))
    return [i for name in names for i in [k for k, g in enumerate(groups) if g == name][:per]]


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
