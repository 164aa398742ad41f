"""The Ray stages of `cemiray seeds` (pipeline part): read tasks, generator and embedder actors.

One Ray Data pass does the heavy work: read tasks turn face-source parts into image rows
(cemiray.runtime.reader), sampler actors turn generator seeds into images (the unconditional
DDPM's or the StyleGAN's), and embedder actors (each holding the conditioning recogniser and the
judge once) add the unit embedding, the raw feature norm and the judge's embedding."""

from __future__ import annotations

import json

import numpy as np
import ray.data

from cemiray.data.images import decode_image, encode_png
from cemiray.models.recognizer import load_recognizer
from cemiray.pipeline.seeds.config import SeedsConfig
from cemiray.pipeline.seeds.plan import SEED, seed_transform
from cemiray.runtime.reader import ReadPart, read_parts


class UncondSampler:
    """A Ray Data actor: loads the unconditional generator once, samples one image per row."""

    def __init__(self, url: str, steps: int, sampler: str, device: str) -> None:
        # diffusers takes seconds to import: only the sampler actors pay for it
        from cemiray.diffusion.unconditional import load_unconditional

        self.gen = load_unconditional(url, device)
        self.steps, self.sampler, self.device = steps, sampler, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.diffusion.unconditional import sample_unconditional

        images = sample_unconditional(self.gen, [int(s) for s in batch["noise_seed"]],
                                      self.steps, self.sampler, self.device)
        return sampled_rows(batch, images)


class GANSampler:
    """A Ray Data actor: loads (and checks) the StyleGAN generator once, samples one image per
    row from the row's noise seed with truncation ψ, or, with `located` (gan_condition), from
    a seed screened for the row's target cell with its w pulled toward the cell's mean by `psi`
    (cemiray.pipeline.seeds.gan_condition)."""

    def __init__(self, url: str, truncation: float, device: str,
                 located: dict | None = None, psi: float = 1.0, tries: int = 16) -> None:
        from cemiray.models.stylegan_io import load_gan

        self.gen, _, _ = load_gan(url, device)
        self.truncation, self.device = truncation, device
        self.located, self.psi, self.tries = located, psi, tries

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.models.stylegan import sample_gan

        seeds = [int(s) for s in batch["noise_seed"]]
        if self.located:
            from cemiray.pipeline.seeds.gan_condition import pulled_images

            cells = [str(c) for c in batch["cell"]]
            images, used, tries = pulled_images(self.gen, seeds, cells, self.located, self.psi,
                                                self.tries)
            return sampled_rows(batch, images, [
                {"_requested": c, "_seed": s, "_tries": t}
                for c, s, t in zip(cells, used, tries, strict=True)])
        images = sample_gan(self.gen, seeds, self.truncation, batch_size=len(seeds),
                            device=self.device)
        return sampled_rows(batch, images)


def sampled_rows(batch: dict[str, np.ndarray], images: np.ndarray,
                 attributes: list[dict] | None = None) -> dict[str, np.ndarray]:
    """A sampler's output rows: the plan columns with the images as PNG and no attributes (or
    the given notes, e.g. the requested cell)."""
    notes = [json.dumps(a) for a in attributes] if attributes else ["{}"] * len(images)
    return {"index": batch["index"], "source": batch["source"], "roles": batch["roles"],
            "image": np.array([encode_png(im) for im in images], dtype=object),
            "label": batch["label"], "attributes": np.array(notes, dtype=object)}


def sample_source(cfg: SeedsConfig, sources: list[dict], kind: str, actor, kwargs: dict,
                  cells: list[str] | None = None):
    """The rows of the `kind` seed source turned into images by `actor` (a Ray Data actor
    pool), or None when there is no such source; row k samples noise seed generator_seed + k
    (aimed at `cells[k]` when given)."""
    found = [s for s in sources if s["kind"] == kind]
    if not found:
        return None
    number, first, count = sources.index(found[0]), found[0]["offset"], found[0]["rows"]
    rows = [{"index": first + k, "source": number, "roles": SEED, "label": k,
             "noise_seed": cfg.generator_seed + k} for k in range(count)]
    if cells is not None:
        rows = [{**row, "cell": cell} for row, cell in zip(rows, cells, strict=True)]
    blocks = -(-len(rows) // cfg.generator_batch)
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        actor,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors_max),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
        batch_size=cfg.generator_batch,
        batch_format="numpy",
        fn_constructor_kwargs=kwargs,
    )


class SeedEmbedder:
    """A Ray Data actor: loads the conditioning recogniser (and the judge) once; adds the unit
    `embedding`, the raw `feature_norm` and, with a judge, `judge_embedding`. Images of rows
    that are not seeds (or all, without keep_images) are dropped here."""

    def __init__(self, recognizer: str, judge: str | None, device: str,
                 keep_images: bool, attribute_model: str | None = None,
                 attributes: list[str] | None = None) -> None:
        self.recognizer = load_recognizer(recognizer, device)
        self.judge = load_recognizer(judge, device) if judge else None
        self.keep_images = keep_images
        self.labeller = None
        if attribute_model:
            from cemiray.models.attributes import load_attribute_model

            self.labeller = load_attribute_model(attribute_model, device)
            predicts = {s.name for s in self.labeller.specs}
            self.predicted = [a for a in attributes or [] if a in predicts]
        self.device = device

    def label(self, batch: dict[str, np.ndarray], images: list[np.ndarray]) -> np.ndarray:
        """The rows' attributes JSON, the ones a row lacks predicted from its image (marked
        `_from_model`)."""
        from cemiray.eval.attributes import predict_images

        rows = [json.loads(a) for a in batch["attributes"]]
        need = [i for i, r in enumerate(rows) if any(r.get(a) is None for a in self.predicted)]
        if need and self.predicted:
            pred = predict_images(self.labeller, [images[i] for i in need], device=self.device)
            for k, i in enumerate(need):
                filled = [a for a in self.predicted if rows[i].get(a) is None]
                for a in filled:
                    value = pred[a][k]
                    rows[i][a] = value.item() if isinstance(value, np.generic) else value
                rows[i]["_from_model"] = filled
        return np.array([json.dumps(r) for r in rows], dtype=object)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        images = [decode_image(bytes(batch["image"][i]), where=f"row index {batch['index'][i]}")
                  for i in range(n)]
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        raw = np.empty((n, self.recognizer.dim), dtype=np.float32)
        judged = np.empty((n, self.judge.dim), dtype=np.float32) if self.judge else None
        for rows in groups.values():
            stacked = np.stack([images[i] for i in rows])
            raw[rows] = self.recognizer.embed(stacked, normalize=False, batch_size=len(rows))
            if self.judge is not None:
                judged[rows] = self.judge.embed(stacked, batch_size=len(rows))
        norms = np.linalg.norm(raw, axis=1)
        keep = (np.asarray(batch["roles"]) & SEED).astype(bool) & self.keep_images
        out = {k: batch[k] for k in ("index", "source", "roles", "label", "attributes")}
        if self.labeller is not None:
            out["attributes"] = self.label(batch, images)
        out["image"] = np.array([batch["image"][i] if keep[i] else b"" for i in range(n)],
                                dtype=object)
        out["embedding"] = raw / np.maximum(norms, 1e-12)[:, None]
        out["feature_norm"] = norms.astype(np.float32)
        if judged is not None:
            out["judge_embedding"] = judged
        return out


def build_dataset(cfg: SeedsConfig, items: list[ReadPart], sources: list[dict],
                  gan_cells: dict | None = None):
    """The Ray Data pass: reads and generator samples, then the embedder actors. `gan_cells`
    (gan_condition): the mean w of each quota cell, which the GAN rows are aimed at."""
    parts = []
    device = "cuda" if cfg.use_gpu else "cpu"
    if items:
        parts.append(read_parts(items, columns=None, transform=seed_transform(cfg),
                                num_cpus=min(0.5, max(cfg.cpus_per_actor, 0.1))))
    for kind, actor, kwargs in (
            ("generator", UncondSampler, {"url": cfg.generator, "steps": cfg.generator_steps,
                                          "sampler": cfg.generator_sampler, "device": device}),
            ("gan", GANSampler, {"url": cfg.gan, "truncation": cfg.truncation,
                                 "device": device, "located": gan_cells,
                                 "psi": cfg.gan_condition_psi,
                                 "tries": cfg.gan_condition_tries})):
        cells = None
        if kind == "gan" and gan_cells:
            from cemiray.pipeline.seeds.gan_condition import row_cells

            (shares,) = cfg.quotas.values()
            cells = row_cells(shares, cfg.gan_samples)
        samples = sample_source(cfg, sources, kind, actor, kwargs, cells)
        if samples is not None:
            parts.append(samples)
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return ds.map_batches(
        SeedEmbedder,
        compute=ray.data.ActorPoolStrategy(min_size=cfg.num_actors_min,
                                           max_size=cfg.num_actors_max),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"recognizer": cfg.recognizer, "judge": cfg.judge,
                               "device": device, "keep_images": cfg.keep_images,
                               "attribute_model": cfg.attribute_model,
                               "attributes": cfg.attributes},
    )
