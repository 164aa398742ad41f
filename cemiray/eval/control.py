"""How well a CemiFace generator obeys the requested similarity m.

For every inquiry identity and every target m, images are sampled and their achieved similarity
is measured with the recogniser E_id against the inquiry embedding. Reported: mean/std achieved
per target, Spearman's rank correlation between target and achieved over all images, the mean
|achieved − target| open-loop (per sampler: DDIM-20 and DPM-Solver++-10 by default) and after
closed-loop re-drawing (cemiray.diffusion.closed_loop).

E_id conditions the generator, sits in its loss and picks the closed loop's tries, so its figures
can flatter it. With a `judge` (a recogniser that played no part in making the images) the same
figures are measured again by the judge, between each kept image and the inquiry image, under
`metrics["judge"]`; the E_id figures stay beside them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cemiray.data import storage
from cemiray.diffusion.closed_loop import closed_loop_generate
from cemiray.diffusion.pipeline import (
    CemiFacePipeline,
    identity_embeddings_from_images,
    validate_embeddings,
)

DEFAULT_TARGETS = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_SAMPLERS = (("ddim", 20), ("dpmsolver++", 10))


@dataclass
class ControlReport:
    """`metrics`: JSON-ready numbers (see control_report). `images`: uint8
    identities × targets × H × W × 3, the first open-loop image of each cell. `achieved`:
    identities × targets × images_per_target similarities of the main sampler, open loop."""

    metrics: dict
    images: np.ndarray
    achieved: np.ndarray


def _embeddings(recognizer, inquiry: np.ndarray | Tensor) -> Tensor:
    if isinstance(inquiry, np.ndarray) and inquiry.dtype == np.uint8:
        return identity_embeddings_from_images(recognizer, inquiry)
    emb = torch.as_tensor(inquiry, dtype=torch.float32)
    validate_embeddings(emb, emb.shape[-1] if emb.ndim == 2 else 0)
    return emb


def _sample(pipe, recognizer, emb, m, seeds, steps, scheduler, batch_size, guidance):
    images, sims = [], []
    for lo in range(0, len(seeds), batch_size):
        part = slice(lo, lo + batch_size)
        out = pipe(emb[part], m[part], seeds[part], num_inference_steps=steps,
                   scheduler=scheduler, recognizer=recognizer, **guidance)
        images.append(out.images)
        sims.append(out.similarity)
    return np.concatenate(images), np.concatenate(sims).astype(np.float64)


def judge_similarity(judge, reference: np.ndarray, images: np.ndarray,
                     identity: np.ndarray) -> np.ndarray:
    """The judge's similarity of each image to its identity's inquiry (`reference`: the judge's
    embeddings of the inquiry images, one row per identity)."""
    return judge.similarity(judge.embed(images), reference[identity])


def _per_target(grid: np.ndarray, targets: list[float]) -> list[dict]:
    return [{"target": t, "mean": float(grid[:, j].mean()), "std": float(grid[:, j].std()),
             "n": int(grid[:, j].size)} for j, t in enumerate(targets)]


def _scores(target: np.ndarray, achieved: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    rho = spearmanr(target, achieved).statistic if np.ptp(target) > 0 else float("nan")
    return {"spearman": float(rho), "mae": float(np.abs(achieved - target).mean())}


def control_report(
    pipe: CemiFacePipeline,
    recognizer,
    inquiry: np.ndarray | Tensor,
    targets: Sequence[float] = DEFAULT_TARGETS,
    images_per_target: int = 1,
    steps: int = 20,
    scheduler: str = "ddim",
    seed: int = 0,
    samplers: Sequence[tuple[str, int]] = DEFAULT_SAMPLERS,
    closed_loop: bool = True,
    tolerance: float = 0.05,
    max_tries: int = 4,
    batch_size: int = 64,
    guidance_scale: float = 1.0,
    guidance_m: float = 0.0,
    judge=None,
) -> ControlReport:
    """Measure control on `inquiry` (uint8 N×H×W×3 inquiry images, or N×D unit embeddings).

    Image k of identity i at target j uses seed `seed + (i·len(targets) + j)·images_per_target
    + k`, the same for every sampler. metrics: `per_target` [{target, mean, std, n}],
    `spearman` and `mae` (main sampler `scheduler`-`steps`, open loop), `samplers`
    {"name-steps": {spearman, mae}}, `closed_loop` {mae, within_tolerance, mean_tries}. With a
    `judge` (needs inquiry images), `judge` {per_target, spearman, mae, closed_loop} measured by
    it on the same images."""
    if images_per_target < 1 or batch_size < 1:
        raise ValueError("images_per_target and batch_size must be >= 1")
    targets = [float(t) for t in targets]
    if not targets:
        raise ValueError("control_report: no targets")
    if judge is not None and not (isinstance(inquiry, np.ndarray) and inquiry.dtype == np.uint8):
        raise ValueError("control_report: a judge compares images with the inquiry images; "
                         "give uint8 N×H×W×3 inquiry images, not embeddings")
    emb = _embeddings(recognizer, inquiry)
    n, nt, k = emb.shape[0], len(targets), images_per_target
    cell = np.arange(n * nt * k)
    ident = cell // (nt * k)
    target = np.asarray(targets)[(cell // k) % nt]
    seeds = [seed + int(c) for c in cell]
    e = emb[torch.as_tensor(ident)]
    m = torch.as_tensor(target, dtype=torch.float32)

    guidance = {"guidance_scale": float(guidance_scale), "guidance_m": float(guidance_m)}
    images, achieved = _sample(pipe, recognizer, e, m, seeds, steps, scheduler, batch_size,
                               guidance)
    metrics: dict = {"identities": n, "targets": targets, "images_per_target": k,
                     "sampler": f"{scheduler}-{steps}", "guidance": guidance,
                     **_scores(target, achieved)}
    grid = achieved.reshape(n, nt, k)
    metrics["per_target"] = _per_target(grid, targets)
    if judge is not None:
        reference = judge.embed(inquiry)
        judged = judge_similarity(judge, reference, images, ident)
        metrics["judge"] = {"model_hash": judge.content_hash, **_scores(target, judged),
                            "per_target": _per_target(judged.reshape(n, nt, k), targets)}
    metrics["samplers"] = {f"{scheduler}-{steps}": _scores(target, achieved)}
    for name, sampler_steps in samplers:
        key = f"{name}-{sampler_steps}"
        if key in metrics["samplers"]:
            continue
        _, other = _sample(pipe, recognizer, e, m, seeds, sampler_steps, name, batch_size,
                           guidance)
        metrics["samplers"][key] = _scores(target, other)
    if guidance_scale != 1.0:
        plain = {"guidance_scale": 1.0, "guidance_m": 0.0}
        _, other = _sample(pipe, recognizer, e, m, seeds, steps, scheduler, batch_size, plain)
        metrics["samplers"][f"{scheduler}-{steps}-unguided"] = _scores(target, other)

    if closed_loop:
        sims, tries, within, kept = [], [], [], []
        for lo in range(0, len(seeds), batch_size):
            part = slice(lo, lo + batch_size)
            out = closed_loop_generate(pipe, e[part], m[part], seeds[part], recognizer,
                                       tolerance=tolerance, max_tries=max_tries,
                                       num_inference_steps=steps, scheduler=scheduler,
                                       **guidance)
            sims.append(out.similarity)
            kept.append(out.images)
            tries.append(out.tries)
            within.append(out.within_tolerance)
        closed = np.concatenate(sims)
        metrics["closed_loop"] = {
            **_scores(target, closed), "tolerance": tolerance, "max_tries": max_tries,
            "within_tolerance": float(np.concatenate(within).mean()),
            "mean_tries": float(np.concatenate(tries).mean()),
        }
        if judge is not None:
            judged = judge_similarity(judge, reference, np.concatenate(kept), ident)
            metrics["judge"]["closed_loop"] = {
                **_scores(target, judged), "tolerance": tolerance,
                "within_tolerance": float((np.abs(judged - target) <= tolerance).mean())}
    first = images.reshape(n, nt, k, *images.shape[1:])[:, :, 0]
    return ControlReport(metrics=metrics, images=first, achieved=grid)


def save_grid_png(images: np.ndarray, url: str, inquiry: np.ndarray | None = None,
                  pad: int = 2) -> None:
    """One PNG: rows = identities, columns = targets (`images` uint8 rows×cols×H×W×3), with the
    inquiry image as an extra first column when given, `pad` white pixels between cells."""
    from cemiray.data.images import encode_png

    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"save_grid_png: expected uint8 rows×cols×H×W×3, got {images.dtype} "
                         f"{images.shape}")
    if inquiry is not None:
        if inquiry.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"save_grid_png: inquiry must be {images.shape[0]}×H×W×3 like the "
                             f"cells, got {inquiry.shape}")
        images = np.concatenate([inquiry[:, None], images], axis=1)
    rows, cols, h, w, _ = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = images[r, c]
    storage.atomic_write_bytes(url, encode_png(canvas))


def save_labelled_grid(images: np.ndarray, columns: list[str], url: str,
                       inquiry: np.ndarray | None = None, cell_px: int = 96,
                       rows: list[str] | None = None) -> dict:
    """A grid a person can read: cells upscaled to `cell_px` (nearest neighbour, pixels kept
    square), each column titled by `columns` (the requested m or variation), the inquiry image
    first when given, `rows` naming the identities. One PNG; returns its layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(f"save_labelled_grid: expected uint8 rows×cols×H×W×3, got "
                         f"{images.dtype} {images.shape}")
    if len(columns) != images.shape[1]:
        raise ValueError(f"save_labelled_grid: {len(columns)} column labels for "
                         f"{images.shape[1]} columns")
    if inquiry is not None:
        images = np.concatenate([inquiry[:, None], images], axis=1)
        columns = ["inquiry", *columns]
    n_rows, n_cols = images.shape[:2]
    dpi = 100
    title_in = 0.45
    figure = Figure(figsize=(n_cols * cell_px / dpi, n_rows * cell_px / dpi + title_in), dpi=dpi)
    FigureCanvasAgg(figure)
    top = 1 - title_in / figure.get_figheight()
    grid = figure.add_gridspec(n_rows, n_cols, left=0.0, right=1.0, bottom=0.0, top=top,
                               wspace=0.04, hspace=0.04)
    for r in range(n_rows):
        for c in range(n_cols):
            axes = figure.add_subplot(grid[r, c])
            axes.imshow(images[r, c], interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(str(columns[c]).replace("$", r"\$"), fontsize=7, pad=2)
            if rows is not None and c == 0:
                axes.set_ylabel(str(rows[r]), fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    storage.atomic_write_bytes(url, buffer.getvalue())
    return {"png": url, "rows": n_rows, "columns": list(columns), "cell_px": cell_px}
