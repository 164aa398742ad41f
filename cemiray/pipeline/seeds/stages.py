"""The Ray stages of `cemiray seeds` (pipeline part): read tasks, generator and embedder actors.

One Ray Data pass does the heavy work: read tasks turn face-source parts into image rows
(cemiray.runtime.reader), sampler actors turn generator seeds into images (the unconditional
DDPM's or the StyleGAN's), and embedder actors (each holding the conditioning recogniser and the
judge once) add the unit embedding, the raw feature norm and the judge's embedding."""

from __future__ import annotations

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
    row from the row's noise seed with truncation ψ."""

    def __init__(self, url: str, truncation: float, device: str) -> None:
        from cemiray.models.stylegan_io import load_gan

        self.gen, _, _ = load_gan(url, device)
        self.truncation, self.device = truncation, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.models.stylegan import sample_gan

        seeds = [int(s) for s in batch["noise_seed"]]
        images = sample_gan(self.gen, seeds, self.truncation, batch_size=len(seeds),
                            device=self.device)
        return sampled_rows(batch, images)


def sampled_rows(batch: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
    """A sampler's output rows: the plan columns with the images as PNG and no attributes."""
    n = len(images)
    return {"index": batch["index"], "source": batch["source"], "roles": batch["roles"],
            "image": np.array([encode_png(im) for im in images], dtype=object),
            "label": batch["label"], "attributes": np.array(["{}"] * n, dtype=object)}


def sample_source(cfg: SeedsConfig, sources: list[dict], kind: str, actor, kwargs: dict):
    """The rows of the `kind` seed source turned into images by `actor` (a Ray Data actor
    pool), or None when there is no such source; row k samples noise seed generator_seed + k."""
    found = [s for s in sources if s["kind"] == kind]
    if not found:
        return None
    number, first, count = sources.index(found[0]), found[0]["offset"], found[0]["rows"]
    rows = [{"index": first + k, "source": number, "roles": SEED, "label": k,
             "noise_seed": cfg.generator_seed + k} for k in range(count)]
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
                 keep_images: bool) -> None:
        self.recognizer = load_recognizer(recognizer, device)
        self.judge = load_recognizer(judge, device) if judge else None
        self.keep_images = keep_images

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
        out["image"] = np.array([batch["image"][i] if keep[i] else b"" for i in range(n)],
                                dtype=object)
        out["embedding"] = raw / np.maximum(norms, 1e-12)[:, None]
        out["feature_norm"] = norms.astype(np.float32)
        if judged is not None:
            out["judge_embedding"] = judged
        return out


def build_dataset(cfg: SeedsConfig, items: list[ReadPart], sources: list[dict]):
    """The Ray Data pass: reads and generator samples, then the embedder actors."""
    parts = []
    device = "cuda" if cfg.use_gpu else "cpu"
    if items:
        parts.append(read_parts(items, columns=None, transform=seed_transform(cfg),
                                num_cpus=min(0.5, max(cfg.cpus_per_actor, 0.1))))
    for kind, actor, kwargs in (
            ("generator", UncondSampler, {"url": cfg.generator, "steps": cfg.generator_steps,
                                          "sampler": cfg.generator_sampler, "device": device}),
            ("gan", GANSampler, {"url": cfg.gan, "truncation": cfg.truncation,
                                 "device": device})):
        samples = sample_source(cfg, sources, kind, actor, kwargs)
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
                               "device": device, "keep_images": cfg.keep_images},
    )
