"""The sampler actor of `cemiray generate` (pipeline): Ray Data actor that samples chunks.

It holds the CemiFace generator, the conditioning recogniser and the optional judge, loaded once
per actor, and samples every image by the job's SamplingSpec.

It takes chunk rows (see shard_plan.work_items: a few whole identities with every image's target
m, seed and variation) and yields raw uint8 images with their measured similarity, one
micro-batch of at most `images_per_call` images at a time, so the fan-out from a chunk to its
images leaves the actor in small blocks. Scoring (and the closed loop, which re-samples images
off target) runs here, next to the images; PNG encoding and writing do not
(cemiray.pipeline.generate.writer). Each row carries the sampler's CPU seconds per image
(process time of the micro-batch ÷ its images) for the run's per-stage cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cemiray.diffusion.sampling import SamplingSpec
from cemiray.models.hashing import model_hash
from cemiray.pipeline.generate.chunk_sampler import ChunkSampler


class HashMismatchError(RuntimeError):
    """A model changed on storage after the job hashed it: the rows would lie about lineage."""


def check_hash(url: str, expected: str | None, what: str) -> None:
    """Refuse a model whose content hash is no longer the one the job recorded."""
    actual = model_hash(url)
    if actual != expected:
        raise HashMismatchError(f"{url}: {what} content changed since the job started "
                                f"(sha256 {actual[:12]}, expected {(expected or '')[:12]})")


class SamplerActor(ChunkSampler):
    """Callable class for `Dataset.map_batches(compute=ActorPoolStrategy(...))`."""

    def __init__(
        self,
        generator: str,
        recognizer: str,
        hashes: dict[str, str | None],
        sampling: SamplingSpec,
        judge: str | None = None,
        use_gpu: bool = False,
        images_per_call: int = 64,
        variation_estimator: str | None = None,
    ) -> None:
        from cemiray.diffusion.pipeline import load_pipeline
        from cemiray.models.recognizer import load_recognizer

        super().__init__(images_per_call)
        self.device = "cuda" if use_gpu else "cpu"
        check_hash(generator, hashes["generator"], "generator")
        pipe = load_pipeline(generator).to(self.device)
        pipe.unet.eval()
        pipe.condition_encoder.eval()
        self.pipe = pipe
        check_hash(recognizer, hashes["recognizer"], "recogniser")
        self.recognizer = load_recognizer(recognizer, self.device)
        self.judge = None
        if judge:
            check_hash(judge, hashes["judge"], "judge")
            self.judge = load_recognizer(judge, self.device)
        self.estimator = None
        if variation_estimator:
            from cemiray.models.attributes import load_attribute_model

            check_hash(variation_estimator, hashes["variation_estimator"], "variation estimator")
            self.estimator = load_attribute_model(variation_estimator, self.device)
            spec = pipe.condition_encoder.variation
            self.measured_names = [s.name for s in self.estimator.specs
                                   if spec is not None and s.name in spec.names]
        self.sampling = sampling

    def prepare(self, item: dict[str, Any]) -> dict[str, Any]:
        """The chunk's identity embeddings, variation and judge inquiries, decoded once."""
        prepared: dict[str, Any] = {
            "embeddings": np.asarray(np.stack(list(item["embeddings"])), dtype=np.float32),
            "variation": None,
            "inquiry": self._judge_inquiry(item) if self.judge is not None else None}
        if item.get("variation") is not None:
            prepared["variation"] = np.asarray(np.stack(list(item["variation"])),
                                               dtype=np.float32)
            prepared["requested"] = np.asarray(item["variation_request"], dtype=object)
        return prepared

    def sample(self, prepared: dict[str, Any], part: slice, position: np.ndarray,
               targets: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        variation = prepared["variation"]
        out = self._sample(torch.from_numpy(prepared["embeddings"][position]), targets,
                           seeds.tolist(), None if variation is None else variation[part].copy())
        rows = {"pixels": out["images"], "similarity": out["similarity"], "seed": out["seeds"],
                "tries": out["tries"]}
        if "within_tolerance" in out:
            rows["within_tolerance"] = out["within_tolerance"]
        if variation is not None:
            rows["variation"] = prepared["requested"][part]
            if self.estimator is not None:
                rows["variation_measured"] = self._measure(out["images"])
        if prepared["inquiry"] is not None:
            rows["judge_similarity"] = self.judge.similarity(
                self.judge.embed(out["images"]), prepared["inquiry"][position])
        return rows

    def _sample(self, ids: Any, targets: np.ndarray, seeds: list[int],
                variation: np.ndarray | None) -> dict[str, np.ndarray]:
        import torch

        from cemiray.diffusion.closed_loop import sample

        out = sample(self.pipe, self.sampling, ids, torch.as_tensor(targets, dtype=torch.float32),
                     seeds, self.recognizer,
                     variation=None if variation is None else torch.from_numpy(variation),
                     output_type="np", device=self.device)
        rows = {"images": out.images, "similarity": out.similarity.astype(np.float64),
                "seeds": out.seeds.astype(np.int64), "tries": out.tries.astype(np.int64)}
        if out.within_tolerance is not None:
            rows["within_tolerance"] = out.within_tolerance.astype(bool)
        return rows

    def _measure(self, images: np.ndarray) -> np.ndarray:
        """The estimator's reading of each image's planned attributes, as JSON text."""
        import json

        from cemiray.eval.attributes import read_attributes

        readings = read_attributes(self.estimator, images, self.measured_names, self.device)
        return np.array([json.dumps(r, sort_keys=True) for r in readings], dtype=object)

    def _judge_inquiry(self, item: dict[str, Any]) -> np.ndarray:
        """Judge embeddings of the chunk's inquiry images, one row per identity."""
        from cemiray.data.images import decode_image

        images = [decode_image(bytes(data), where=f"seed table row {int(label)} inquiry image")
                  for label, data in zip(item["labels"], item["inquiry"], strict=True)]
        if len({image.shape for image in images}) == 1:  # one batch when the sizes agree
            return self.judge.embed(np.stack(images))
        return np.concatenate([self.judge.embed(image[None]) for image in images])

