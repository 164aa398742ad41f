"""`cemiray generate`: a synthetic face dataset from a seed table of identities, sampled by a pool
of generator actors that Ray Data grows and shrinks with the cluster, written as exactly-once
Parquet shards with their lineage.

    cemiray generate seeds=s3://b/seeds.parquet generator=s3://b/cemiface recognizer=s3://b/ir50
        out=s3://b/synthetic/v1 samples_per_identity=50 schedule=0.0 distributed.use_gpu=true
        distributed.num_workers=8        # (one command line: 10K seeds × 50 images, 8 GPUs)

Pipeline (one Ray Data dataset over the shards not yet complete):
  chunk rows (from_items, one block per chunk: a few whole identities of one shard)
  → map_batches(SamplerActor, ActorPoolStrategy(min, max, initial), batch_size=1): generator,
    conditioning recogniser, closed loop and judge, loaded once per actor; yields raw uint8
    images in micro-batches of `images_per_call`
  → map_batches(encode_pngs) as CPU tasks: PNG encoding off the sampler's critical path
  → iter_batches in the driver: rows are buffered per shard and a shard is written (atomically,
    in (label, sample) order) the moment its last image arrives.

Every image is a pure function of the plan: its m, noise seed and variation come from (global
seed, seed_id, sample), and a chunk is always sampled in the same micro-batches, so a chunk
re-sampled by another actor, a retry or a rerun gives the same images — bit for bit on the same
device type and thread count (tests/test_generate.py checks the PNG bytes).

Why the driver writes. Ray Data does not keep rows of one shard together after map_batches, and
a groupby would hold the whole dataset back until every image exists (an all-to-all barrier).
Writing from the driver needs no barrier, writes each shard exactly once per run (rows that a
retried task delivers twice are dropped by their (label, sample) key and counted), and a shard's
bytes are at most a few hundred MB of PNGs, which a driver writes at disk/network speed.

Memory is kept bounded on purpose (rows that fan out into images flood the object store
otherwise, Ray issues 34041/42217):
- the fan-out happens inside the sampler: its input rows are chunk descriptors of a few KB (the
  identities' embeddings and per-image targets/seeds), one block per chunk, so the actor pool's
  unit of work, of backpressure and of retry is one chunk, never a whole shard;
- the sampler yields images in micro-batches of at most `images_per_call`, and blocks are capped
  at `distributed.block_mb` (Ray Data's default is 128 MiB), so the first blocks after the
  fan-out are small and flow on to encoding while the next micro-batch is sampled;
- encoding tasks take one sampler micro-batch each (`distributed.encode_batch` defaults to
  `images_per_call`): a larger batch makes Ray Data hold sampled images back until enough
  blocks are bundled, which delays the shards and grows the driver's buffer;
- each actor holds at most `distributed.tasks_in_flight_per_worker` chunks (default 2: one
  running, one prefetched — also what lets utilisation reach Ray Data's upscaling threshold of
  1.75, so the pool can grow);
- `distributed.object_store_budget_mb` optionally caps Ray Data's object-store budget, which it
  enforces by backpressure on the operators upstream of a full queue;
- the driver buffers only shards that are incomplete; since chunks enter in shard order and at
  most (workers × tasks in flight) chunks are being sampled, that is a few shards. The peak is
  measured and recorded in the manifest (`run.peak_buffered_images`).

A killed sampler actor is restarted and its unfinished chunks are retried: Ray Data gives
actor-pool workers max_restarts=-1 and max_task_retries=-1 by default (passing them through
map_batches is deprecated in Ray 2.60). The rows a retried chunk delivers again are dropped by key.

On 2 cores a sampler actor must reserve at most half a CPU (`distributed.cpus_per_worker`,
default 0.5): actors reserving whole CPUs starve the encode tasks and the pipeline hangs
silently (docs/STACK.md). On GPUs each actor takes one GPU (`distributed.use_gpu`).

Exactly once: see shard_plan. A rerun skips complete shards and redoes missing ones; an output
folder whose plan.json differs from this run's plan is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cemiray.data import storage
from cemiray.pipeline.generate.schedules import (
    ConstantSchedule,
    Schedule,
    VariationSchedule,
    schedule_shorthand,
)
from cemiray.runtime.config import JobConfig, RayConfig

if TYPE_CHECKING:
    from cemiray.pipeline.seeds.table import SeedTable

OUTPUT_COLUMNS = (
    "image", "label", "sample", "seed_id", "source", "target_m", "similarity",
    "judge_similarity", "seed", "tries", "within_tolerance", "variation", "scheduler", "steps",
    "guidance_scale", "guidance_m", "generator_sha256", "recognizer_sha256", "judge_sha256",
    "shard", "worker_pid", "pixels",
)


class SamplerPoolConfig(BaseModel):
    """The sampler actor pool: the part that changes between this CPU and a GPU cluster."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1, description="most sampler actors (one GPU each on GPUs)")
    min_workers: int = Field(1, ge=1, description="fewest sampler actors")
    initial_workers: int | None = Field(None, ge=1, description="actors at start (min if unset)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, ge=0, description="≤ 0.5 on a 2-core machine")
    tasks_in_flight_per_worker: int = Field(2, ge=1, description="chunks queued per actor")
    cpus_per_encode_task: float = Field(0.5, gt=0)
    encode_batch: int | None = Field(None, ge=1, description="images per PNG-encoding batch "
                                     "(None: images_per_call, one sampler micro-batch)")
    block_mb: int = Field(16, ge=1, description="Ray Data's target max block size")
    object_store_budget_mb: int | None = Field(None, ge=1, description="cap on Ray Data's "
                                               "object-store use (None: Ray Data's default)")

    @model_validator(mode="after")
    def _sizes(self) -> SamplerPoolConfig:
        initial = self.initial_workers or self.min_workers
        if not self.min_workers <= initial <= self.num_workers:
            raise ValueError(f"need min_workers ({self.min_workers}) <= initial_workers "
                             f"({initial}) <= num_workers ({self.num_workers})")
        return self


class ClosedLoopConfig(BaseModel):
    """Re-sample images whose achieved similarity misses the target by more than `tolerance`."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.05, ge=0)
    max_tries: int = Field(4, ge=1)


class GenerateConfig(JobConfig):
    out: str = "runs/generate"
    seeds: str = Field(description="seed table (Parquet) URL: seed_id, embedding, source, ...")
    generator: str = Field(description="CemiFace pipeline folder URL (save_pipeline)")
    recognizer: str = Field(description="conditioning recogniser URI (folder, .pth?arch=, .onnx)")
    judge: str | None = Field(None, description="optional independent judge recogniser URI")
    samples_per_identity: int = Field(50, ge=1)
    identities_per_shard: int = Field(50, ge=1)
    schedule: Schedule = Field(default_factory=ConstantSchedule)
    variation: VariationSchedule | None = None
    closed_loop: ClosedLoopConfig | None = None
    seed: int = Field(0, ge=0, description="global seed of targets, noise and variation")
    steps: int = Field(20, ge=1)
    scheduler: Literal["ddim", "dpmsolver++", "euler", "ddpm"] = "ddim"
    guidance_scale: float = Field(1.0, ge=0, description="similarity guidance (1: none; 2 costs "
                                                       "twice the UNet time)")
    guidance_m: float = Field(0.0, ge=-1, le=1, description="reference m of the guidance")
    images_per_call: int = Field(64, ge=1, description="images per generator call")
    exports: list[Literal["recordio", "imagefolder"]] = Field(default_factory=list)
    preview_identities: int = Field(8, ge=1)
    preview_samples: int = Field(8, ge=1)
    leakage_audit: str | None = Field(None, description="optional leakage-audit JSON URL")
    distributed: SamplerPoolConfig = Field(default_factory=SamplerPoolConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("schedule", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return schedule_shorthand(value)


@dataclass
class Inputs:
    """Everything the job reads, validated and hashed before anything is written."""

    table: SeedTable
    id_dim: int
    image_size: int
    hashes: dict[str, str | None]
    audit: dict[str, Any] | None


def _absolute(cfg: GenerateConfig) -> GenerateConfig:
    """Relative local paths made absolute: Ray workers run in other folders."""
    fields = ("out", "seeds", "generator", "recognizer", "judge", "leakage_audit")
    return cfg.model_copy(update={f: storage.absolute(getattr(cfg, f)) for f in fields})


def _generator_facts(url: str) -> dict[str, int]:
    """id_dim, variation attributes and image size from the generator folder's configs."""
    index = storage.join(url, "model_index.json")
    if not storage.exists(index):
        raise FileNotFoundError(f"{url}: not a CemiFace pipeline folder (no model_index.json)")
    try:
        encoder = json.loads(storage.read_text(storage.join(url, "condition_encoder",
                                                            "config.json")))
        unet = json.loads(storage.read_text(storage.join(url, "unet", "config.json")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{url}: unreadable component config ({exc})") from exc
    return {"id_dim": int(encoder["id_dim"]),
            "variation_attrs": int(encoder.get("num_variation_attrs", 0)),
            "image_size": int(unet["sample_size"])}


def prepare_inputs(cfg: GenerateConfig) -> Inputs:
    """Open, validate and hash every input; raises with the file named on the first problem."""
    from cemiray.models.recognizer import load_recognizer
    from cemiray.pipeline.generate.shard_plan import content_hash
    from cemiray.pipeline.seeds.table import read_seed_table

    facts = _generator_facts(cfg.generator)
    attrs = cfg.variation.num_attrs if cfg.variation else 0
    if attrs != facts["variation_attrs"]:
        raise ValueError(f"variation gives {attrs} attribute(s) but the generator "
                         f"{cfg.generator} takes {facts['variation_attrs']}")
    recognizer = load_recognizer(cfg.recognizer, "cpu")
    if recognizer.dim != facts["id_dim"]:
        raise ValueError(f"recognizer {cfg.recognizer} embeds to {recognizer.dim} values but the "
                         f"generator {cfg.generator} is conditioned on {facts['id_dim']}")
    judge_hash = load_recognizer(cfg.judge, "cpu").content_hash if cfg.judge else None
    audit = None
    if cfg.leakage_audit:
        try:
            audit = json.loads(storage.read_text(cfg.leakage_audit))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg.leakage_audit}: unreadable leakage audit ({exc})") from exc
        if not isinstance(audit, dict):
            raise ValueError(f"{cfg.leakage_audit}: a leakage audit must be a JSON object")
    table = read_seed_table(cfg.seeds, expected_dim=facts["id_dim"],
                            need_images=cfg.judge is not None, reserved=OUTPUT_COLUMNS)
    hashes = {"seeds": table.sha256, "generator": content_hash(cfg.generator),
              "recognizer": recognizer.content_hash, "judge": judge_hash}
    return Inputs(table=table, id_dim=facts["id_dim"], image_size=facts["image_size"],
                  hashes=hashes, audit=audit)


def build_dataset(cfg: GenerateConfig, inputs: Inputs, items: list[dict]):
    """The Ray Data pipeline from chunk rows to encoded image rows (lazy)."""
    import ray

    from cemiray.pipeline.generate.sampler_actor import SamplerActor, encode_pngs

    pool = cfg.distributed
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ctx = ds.context  # shared by the datasets derived below, and only by them
    ctx.target_max_block_size = pool.block_mb * 2**20
    if pool.object_store_budget_mb:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=pool.object_store_budget_mb * 2**20)
    closed_loop = cfg.closed_loop.model_dump() if cfg.closed_loop else None
    ds = ds.map_batches(
        SamplerActor,
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_workers,
            max_size=pool.num_workers,
            initial_size=pool.initial_workers or pool.min_workers,
            max_tasks_in_flight_per_actor=pool.tasks_in_flight_per_worker,
        ),
        batch_size=1,
        batch_format="numpy",
        num_cpus=pool.cpus_per_worker,
        num_gpus=1 if pool.use_gpu else 0,
        fn_constructor_kwargs={
            "generator": cfg.generator, "recognizer": cfg.recognizer, "judge": cfg.judge,
            "hashes": inputs.hashes, "use_gpu": pool.use_gpu, "steps": cfg.steps,
            "scheduler": cfg.scheduler, "images_per_call": cfg.images_per_call,
            "closed_loop": closed_loop, "guidance_scale": cfg.guidance_scale,
            "guidance_m": cfg.guidance_m,
        },
    )
    return ds.map_batches(encode_pngs, batch_size=pool.encode_batch or cfg.images_per_call,
                          batch_format="numpy", num_cpus=pool.cpus_per_encode_task)


def _shard_rows(rows: list[dict], cfg: GenerateConfig, inputs: Inputs):
    """The stored rows of one shard: generated values, identity fields and lineage."""
    table, hashes = inputs.table, inputs.hashes
    for r in rows:
        label = int(r["label"])
        out = {
            "image": bytes(r["image"]),
            "label": label,
            "sample": int(r["sample"]),
            "seed_id": int(table.seed_ids[label]),
            "source": table.sources[label],
            "target_m": float(r["target_m"]),
            "similarity": float(r["similarity"]),
        }
        if cfg.judge:
            out["judge_similarity"] = float(r["judge_similarity"])
        out["seed"] = int(r["seed"])
        out["tries"] = int(r["tries"])
        if cfg.closed_loop:
            out["within_tolerance"] = bool(r["within_tolerance"])
        if cfg.variation:
            out["variation"] = [float(v) for v in r["variation"]]
        out.update(scheduler=cfg.scheduler, steps=cfg.steps)
        if cfg.guidance_scale != 1.0:
            out.update(guidance_scale=cfg.guidance_scale, guidance_m=cfg.guidance_m)
        out.update(generator_sha256=hashes["generator"], recognizer_sha256=hashes["recognizer"])
        if cfg.judge:
            out["judge_sha256"] = hashes["judge"]
        for name, values in table.attributes.items():
            out[name] = values[label]
        yield out


def write_generated_shard(url: str, rows: list[dict], cfg: GenerateConfig, inputs: Inputs,
                          spec: Any, plan_sha: str) -> bool:
    """Write one complete shard; False when its file already exists (a concurrent writer)."""
    from cemiray.data.parquet_shards import write_shard

    if storage.exists(url):
        return False
    write_shard(url, _shard_rows(rows, cfg, inputs),
                metadata={"shard": spec.name, "first": spec.first, "last": spec.last,
                          "plan_sha256": plan_sha})
    return True


def generate_shards(cfg: GenerateConfig, inputs: Inputs, pending: list, parquet_url: str,
                    plan_sha: str) -> dict[str, Any]:
    """Stream every pending shard through the pool and write each as soon as it is complete."""
    from cemiray.pipeline.generate.shard_plan import (
        ShardCollector,
        ShardPlanError,
        identities_per_chunk,
        work_items,
    )

    per_chunk = identities_per_chunk(cfg.samples_per_identity, cfg.images_per_call)
    items = [item for spec in pending for item in work_items(
        spec, inputs.table, cfg.samples_per_identity, cfg.schedule, cfg.seed, per_chunk,
        variation=cfg.variation, with_images=cfg.judge is not None)]
    collector = ShardCollector(pending, cfg.samples_per_identity)
    workers: Counter[int] = Counter()
    written = 0
    t0 = time.perf_counter()
    first = None
    for batch in build_dataset(cfg, inputs, items).iter_batches(batch_size=None,
                                                                batch_format="numpy"):
        first = first if first is not None else (time.perf_counter(), len(batch["label"]))
        columns = list(batch)
        for i in range(len(batch["label"])):
            row = {key: batch[key][i] for key in columns}
            workers[int(row["worker_pid"])] += 1
            spec = collector.add(row)
            if spec is not None:
                url = storage.join(parquet_url, spec.name)
                written += write_generated_shard(url, collector.pop(spec), cfg, inputs, spec,
                                                 plan_sha)
    seconds = time.perf_counter() - t0
    missing = collector.missing()
    if missing:
        raise ShardPlanError(f"the pipeline ended with {len(missing)} shard(s) incomplete "
                             f"({dict(list(missing.items())[:5])} images missing); nothing of "
                             "them was written — rerun to complete them")
    images = sum(s.num_identities for s in pending) * cfg.samples_per_identity
    steady_seconds = t0 + seconds - first[0]
    return {"shards_written": written, "images_generated": images,
            "generation_seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
            "first_images_after_seconds": round(first[0] - t0, 3),
            "steady_images_per_s": (round((images - first[1]) / steady_seconds, 2)
                                    if steady_seconds > 0 else None),
            "duplicates_dropped": collector.duplicates,
            "peak_buffered_images": collector.peak_buffered,
            "sampler_workers": {str(pid): n for pid, n in sorted(workers.items())}}


def _manifest(cfg: GenerateConfig, inputs: Inputs, fingerprint: dict, shards: list,
              parquet_url: str, run: dict) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The manifest (statistics read back from every shard), and the targets and achieved
    similarities for the histogram."""
    from cemiray.data.parquet_shards import shard_num_rows
    from cemiray.pipeline.generate import dataset_card as card

    urls = [storage.join(parquet_url, s.name) for s in shards]
    columns = ["label", "sample", "target_m", "similarity"]
    columns += ["judge_similarity"] if cfg.judge else []
    columns += ["within_tolerance"] if cfg.closed_loop else []
    stats = card.read_columns(urls, columns)
    target = stats.column("target_m").to_numpy()
    achieved = stats.column("similarity").to_numpy()
    within = stats.column("within_tolerance").to_numpy() if cfg.closed_loop else None
    judge = stats.column("judge_similarity").to_numpy() if cfg.judge else None
    table = inputs.table
    counts = {"identities": len(table), "images_per_identity": cfg.samples_per_identity,
              "images": int(stats.num_rows), "shards": len(shards)}
    expected = len(table) * cfg.samples_per_identity
    if counts["images"] != expected:
        raise RuntimeError(f"{parquet_url}: the shards hold {counts['images']} rows, the plan "
                           f"{expected}")
    leakage = table.attributes.get("leakage_max")
    return {
        "format": card.MANIFEST_FORMAT,
        "name": cfg.out.rstrip("/").rsplit("/", 1)[-1],
        "created_unix": round(time.time(), 3),
        "config": json.loads(cfg.to_json()),
        "plan": fingerprint,
        "lineage": inputs.hashes,
        "schedule": cfg.schedule.describe(),
        "image_size": inputs.image_size,
        "counts": counts,
        "shards": [{"name": s.name, "first": s.first, "last": s.last,
                    "rows": shard_num_rows(u)} for s, u in zip(shards, urls, strict=True)],
        "similarity": card.similarity_groups(target, achieved, within, judge),
        "sources": dict(Counter(table.sources).most_common(20)),
        "attributes": card.attribute_summary(table.attributes),
        "leakage": card.leakage_summary(leakage, inputs.audit, cfg.leakage_audit),
        "run": run,
    }, target, achieved


def run(cfg: GenerateConfig) -> dict:
    """Generate (or complete) the dataset at `cfg.out`; returns a summary of the run."""
    from cemiray.pipeline.generate import dataset_card as card
    from cemiray.pipeline.generate import shard_plan as sp
    from cemiray.pipeline.generate.exporters import export_imagefolder, export_recordio
    from cemiray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    cfg = _absolute(cfg)
    inputs = prepare_inputs(cfg)
    fingerprint = sp.plan_fingerprint(json.loads(cfg.to_json()), inputs.hashes)
    plan_sha = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    parquet_url = storage.join(cfg.out, "parquet")
    if not sp.check_plan(cfg.out, parquet_url, fingerprint):
        storage.makedirs(cfg.out)
        sp.write_plan(cfg.out, fingerprint)
    cfg.save(cfg.out)
    storage.makedirs(parquet_url)
    shards = sp.plan_shards(len(inputs.table), cfg.identities_per_shard)
    stale = sp.remove_stale_temporaries(parquet_url)
    done = sp.complete_shards(parquet_url, shards)
    pending = [s for s in shards if s.index not in done]
    run_info: dict[str, Any] = {"shards_skipped": len(done), "stale_temporaries_removed": stale}
    if pending:
        init_ray(cfg.ray)
        run_info.update(generate_shards(cfg, inputs, pending, parquet_url, plan_sha))
    else:
        run_info.update(shards_written=0, images_generated=0, generation_seconds=0.0,
                        images_per_s=None, first_images_after_seconds=None,
                        steady_images_per_s=None, duplicates_dropped=0, peak_buffered_images=0,
                        sampler_workers={})
    manifest, target, achieved = _manifest(cfg, inputs, fingerprint, shards, parquet_url,
                                           run_info)
    urls = [storage.join(parquet_url, s.name) for s in shards]
    card.write_histogram(storage.join(cfg.out, card.HISTOGRAM_NAME), target, achieved)
    card.write_preview_grid(storage.join(cfg.out, card.GRID_NAME), urls,
                            cfg.preview_identities, cfg.preview_samples)
    exports = {}
    if "recordio" in cfg.exports:
        exports["recordio"] = storage.join(cfg.out, "recordio")
        export_recordio(parquet_url, exports["recordio"], len(inputs.table), inputs.image_size)
    if "imagefolder" in cfg.exports:
        exports["imagefolder"] = storage.join(cfg.out, "imagefolder")
        export_imagefolder(parquet_url, exports["imagefolder"])
    manifest["exports"] = exports
    manifest["run"]["wall_seconds"] = round(time.perf_counter() - t0, 3)
    card.write_card(cfg.out, manifest)
    manifest_url = card.write_manifest(cfg.out, manifest)
    counts = manifest["counts"]
    rate = run_info["images_per_s"]
    steady = run_info["steady_images_per_s"]
    print(f"generate: {counts['images']} images ({counts['identities']} identities × "
          f"{counts['images_per_identity']}), {run_info['images_generated']} generated this run"
          f" at {rate if rate is not None else '-'} img/s ({steady if steady else '-'} img/s "
          f"after the first images), {len(done)} shard(s) kept; "
          f"wall {manifest['run']['wall_seconds']:.1f} s → {cfg.out}")
    return {"out": cfg.out, "parquet": parquet_url, "manifest": manifest_url,
            "card": storage.join(cfg.out, card.CARD_NAME), "counts": counts, "exports": exports,
            **manifest["run"]}
