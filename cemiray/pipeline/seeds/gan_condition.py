"""GAN samples aimed at quota cells for `cemiray seeds` (pipeline part): the driver's side.

With `gan_condition`, before the Ray pass the driver labels `gan_calibration` GAN samples with
the attribute predictor and takes each quota cell's mean w (cemiray.models.stylegan_targets);
every GAN row of the plan is then given a target cell, in proportion to the quota and
interleaved; the sampler actors pick for each row a seed whose w a linear discriminant in W puts
in its cell (nothing rendered), then pull that w toward the cell's mean. The embedder's
attribute predictor labels the images as it labels any sample, so a draw that missed its cell
counts for the cell it landed in (or is left out by the quotas): the rejection is the quotas'."""

from __future__ import annotations

import numpy as np

from cemiray.pipeline.seeds.config import SeedsConfig

# Calibration samples use seeds 3.5e9 onwards, apart from the candidates' (generator_seed + k)
# in the low 32 bits, the only bits torch's CPU generator keeps (cemiray.models.noise_seeds).
CALIBRATION_SEED = 3_500_000_000


def locate_cells(cfg: SeedsConfig) -> tuple[dict, dict]:
    """({"centroids": {cell: mean w} for every quota cell with a positive share, "probe": the
    linear discriminant in W}, a report of what the calibration found); a cell no calibration
    sample lands in is refused naming it."""
    from cemiray.eval.attributes import cell_labeller
    from cemiray.models.attributes import load_attribute_model
    from cemiray.models.stylegan_io import load_gan
    from cemiray.models.stylegan_targets import locate

    (names, shares), = cfg.quotas.items()
    attributes = names.split(",")
    gan, _, _ = load_gan(cfg.gan)
    cells_of = cell_labeller(load_attribute_model(cfg.attribute_model), attributes)
    found, probe = locate(gan, cells_of,
                          [CALIBRATION_SEED + k for k in range(cfg.gan_calibration)])
    wanted = [c for c, f in shares.items() if f > 0]
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ValueError(f"quota {names!r}: cell(s) {missing} never appear among "
                         f"{cfg.gan_calibration} gan samples labelled by {cfg.attribute_model} "
                         f"(found {sorted(found)}): no candidate can fill them")
    report = {"attributes": attributes, "samples": cfg.gan_calibration,
              "natural": {c: f["share"] for c, f in found.items()}}
    return {"centroids": {c: found[c]["w"].tolist() for c in wanted}, "probe": probe}, report


def row_cells(shares: dict[str, float], rows: int) -> list[str]:
    """A target cell for each of `rows` GAN rows: counts in proportion to `shares` (largest
    remainder), interleaved so every prefix of the rows is close to the proportions."""
    from cemiray.eval.seed_quotas import largest_remainder

    cells = [c for c, f in shares.items() if f > 0]
    counts = largest_remainder([shares[c] for c in cells], rows)
    # each cell's k-th row sits at (k + ½) / count of the way: sorting those places interleaves
    keys = [((k + 0.5) / n, i) for i, n in enumerate(counts) for k in range(n)]
    return [cells[i] for _, i in sorted(keys)]


def pulled_images(gen, seeds: list[int], cells: list[str], located: dict, psi: float,
                  tries: int) -> tuple[np.ndarray, list[int], list[int]]:
    """Each row's image: a seed screened by the W probe for its cell, its w pulled toward the
    cell's mean (cemiray.models.stylegan_targets); also the seeds used and the tries taken."""
    import torch

    from cemiray.models.stylegan_targets import pulled, screened

    used, tries_taken = screened(gen, located["probe"], seeds, cells, tries)
    centroids = torch.as_tensor([located["centroids"][c] for c in cells])
    return pulled(gen, used, centroids, psi), used, tries_taken


def condition_report(calibration: dict, attrs: list[dict], psi: float) -> dict:
    """The calibration's natural shares and, per requested cell, how many aimed samples the
    attribute model put in it (the rest count elsewhere or are left out by the quotas)."""
    from cemiray.eval.seed_quotas import cell_key

    names = calibration["attributes"]
    aimed: dict[str, list[int]] = {}
    tries = [row["_tries"] for row in attrs if "_tries" in row]
    for row in attrs:
        if "_requested" in row:
            landed = cell_key([row.get(a) for a in names]) == row["_requested"]
            aimed.setdefault(row["_requested"], [0, 0])[landed] += 1
    per_cell = {c: {"aimed": m + h, "landed": h, "hit_rate": h / (m + h)}
                for c, (m, h) in sorted(aimed.items())}
    total = sum(v["aimed"] for v in per_cell.values())
    return {**calibration, "psi": psi, "aimed": total, "per_cell": per_cell,
            "screening_tries_mean": float(np.mean(tries)) if tries else None,
            "hit_rate": sum(v["landed"] for v in per_cell.values()) / total if total else None}
