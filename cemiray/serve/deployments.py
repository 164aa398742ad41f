"""The model deployments of the serve app (serve): the recogniser and the CemiFace generator.

One image per call, batched while the model is busy (cemiray.serve.batching); each loads its
model from the server config alone and names it by its content hash (cemiray.models.hashing.model_hash). The generator samples each
batch by the requests' SamplingSpec (cemiray.diffusion.closed_loop.sample).

(No `from __future__ import annotations` here: Serve ships these classes to replicas by value.)
"""

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from ray import serve

from cemiray.diffusion.sampling import SamplingSpec
from cemiray.models.hashing import model_hash
from cemiray.serve.batching import DynamicBatcher
from cemiray.serve.config import GENERATOR, RECOGNIZER, ServeConfig


@dataclass(frozen=True)
class ImageJob:
    """One image to generate; jobs of one batch sharing a sampling spec are sampled together."""

    embedding: np.ndarray
    m: float
    seed: int
    spec: SamplingSpec
    variation: tuple | None = None  # normalised values, NaN unspecified (VariationSpec)


@serve.deployment(name=RECOGNIZER)
class RecognizerModel:
    """The face recogniser: one image per call (any size; resized to the model's input)."""

    def __init__(self, cfg: ServeConfig):
        from cemiray.models.recognizer import load_recognizer

        self.uri = cfg.recognizer
        self.content_hash = model_hash(cfg.recognizer)
        self.recognizer = load_recognizer(cfg.recognizer, device=cfg.device)
        self.batcher = DynamicBatcher(self._embed, cfg.max_batch_size, cfg.batch_wait_timeout_s)

    def info(self) -> dict:
        rec = self.recognizer
        return {"uri": self.uri, "content_hash": self.content_hash, "details": {
            "kind": type(rec).__name__, "dim": rec.dim, "input_size": rec.input_size,
            **self.batcher.stats.as_dict()}}

    def ping(self) -> str:
        return "ok"

    async def embed(self, image: np.ndarray) -> np.ndarray:
        return await self.batcher.submit(image)

    def _embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        from cemiray.models.recognizer_base import images_to_tensor, resize_square

        size = self.recognizer.input_size
        # np.array copies: arrays from the object store are read-only, which torch warns about.
        x = torch.cat([resize_square(images_to_tensor(np.array(im[None])), size) for im in images])
        return list(self.recognizer.embed(x))


@serve.deployment(name=GENERATOR)
class GeneratorModel:
    """The CemiFace sampler plus its own copy of the recogniser, which measures each image's
    achieved similarity (and drives the closed loop)."""

    def __init__(self, cfg: ServeConfig):
        from cemiray.diffusion.pipeline import load_pipeline
        from cemiray.models.recognizer import load_recognizer

        self.uri, self.device = cfg.generator, cfg.device
        self.pipe = load_pipeline(cfg.generator).to(cfg.device)
        self.recognizer = load_recognizer(cfg.recognizer, device=cfg.device)
        id_dim = self.pipe.condition_encoder.config.id_dim
        if id_dim != self.recognizer.dim:
            raise ValueError(f"generator {cfg.generator} takes {id_dim}-d identities but "
                             f"recogniser {cfg.recognizer} gives {self.recognizer.dim}-d ones")
        timesteps = self.pipe.scheduler.config.num_train_timesteps
        if cfg.max_steps > timesteps:
            raise ValueError(f"max_steps={cfg.max_steps} exceeds the generator's "
                             f"{timesteps} training timesteps")
        self.content_hash = model_hash(cfg.generator)
        self.estimator = None
        if cfg.variation_estimator:
            from cemiray.models.attributes import load_attribute_model

            self.estimator = load_attribute_model(cfg.variation_estimator, device=cfg.device)
        spec = self.pipe.condition_encoder.variation
        self.measured = [s.name for s in self.estimator.specs
                         if spec is not None and s.name in spec.names] if self.estimator else []
        self.batcher = DynamicBatcher(self._generate, cfg.max_batch_size,
                                      cfg.batch_wait_timeout_s)

    def info(self) -> dict:
        cfg = self.pipe.condition_encoder.config
        return {"uri": self.uri, "content_hash": self.content_hash, "details": {
            "image_size": self.pipe.unet.config.sample_size, "id_dim": cfg.id_dim,
            "stored_scheduler": type(self.pipe.scheduler).__name__,
            "variation": cfg.variation_spec, "variation_measured_by": self.measured,
            **self.batcher.stats.as_dict()}}

    def ping(self) -> str:
        return "ok"

    async def generate(self, job: ImageJob) -> dict:
        return await self.batcher.submit(job)

    def _generate(self, jobs: list[ImageJob]) -> list[dict]:
        import torch

        from cemiray.diffusion.closed_loop import sample

        results: list[dict] = [{} for _ in jobs]
        groups: dict[SamplingSpec, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[job.spec].append(i)
        for spec, index in groups.items():
            ids = torch.from_numpy(np.stack([jobs[i].embedding for i in index]))
            sims = torch.tensor([jobs[i].m for i in index], dtype=torch.float32)
            variation = None
            if any(jobs[i].variation is not None for i in index):
                attrs = self.pipe.condition_encoder.config.num_variation_attrs
                variation = torch.tensor([jobs[i].variation or (float("nan"),) * attrs
                                          for i in index], dtype=torch.float32)
            out = sample(self.pipe, spec, ids, sims, [jobs[i].seed for i in index],
                         self.recognizer, variation=variation)
            within = out.within_tolerance
            # opt-in (variation_estimator): every image's reading, requested or not
            measured = self._measure(out.images) if self.measured else None
            for j, i in enumerate(index):
                results[i] = {"image": out.images[j], "similarity": float(out.similarity[j]),
                              "seed": int(out.seeds[j]), "tries": int(out.tries[j]),
                              "within_tolerance": None if within is None else bool(within[j]),
                              "variation_measured": measured[j] if measured else None}
        return results

    def _measure(self, images: np.ndarray) -> list[dict]:
        """The estimator's reading of the generator's attributes in each image."""
        from cemiray.eval.attributes import read_attributes

        return read_attributes(self.estimator, images, self.measured, self.device)
