"""`cemiray analyze-centres` (apps part): CemiFace's Table 1 on any labelled face set.

Every image is embedded by a trained recogniser (a Ray Data actor pass), scored by cosine
similarity to its class centre, the set is cut into k groups by that similarity, a
face-recognition model is trained on each group (train-fr, identical settings and step counts)
and scored on one verification `.bin`. The paper found the moderate groups train the best models.

Outputs under `out`: `config.json`, `verification.bin` (when rendered from held-out ToyFaces
identities), `groups/<g>/part-*.parquet` (the group's images, labels renumbered 0..n−1 within
the group; columns `source_label`, `source_index`, `similarity`), `fr/<g>/` (each train-fr run)
and `centres.json` (the table and its provenance). A rerun starts over."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig
from cemiray.train.settings import DistributedConfig

# TrainFRConfig fields this job sets itself: per group, or from its own fields of the same name.
FR_SET_PER_GROUP = ("out", "data", "verification", "max_steps", "distributed", "ray")
FR_OWN_FIELDS = ("backbone", "width", "input_size", "embedding_dim", "epochs", "batch_size", "lr",
                 "warmup_steps", "seed")


def _one_worker() -> DistributedConfig:
    """One worker using both cores of a 2-core machine (IResNet-18, width 16, 32 px: about
    360 img/s here); a GPU cluster sets num_workers and use_gpu."""
    return DistributedConfig(num_workers=1, cpus_per_worker=1, torch_threads=2, zero_stage=1,
                             checkpoint_every=200)


class AnalyzeCentresConfig(JobConfig):
    out: str = "runs/analyze_centres"
    data: str = Field("toyfaces:?seed=0&ids=0-499&samples=20&size=32",
                      description="labelled face set (source URI); labels index the head's rows")
    model: str = Field("runs/train_fr/backbone",
                       description="recogniser embedding `data`: cemiray folder, .pth?arch=, .onnx")
    head: str | None = Field(None, description="class centres: the `head` folder train-fr exports "
                             "beside the backbone, a .safetensors or a .npy (row i = label i); "
                             "None: each identity's mean embedding")
    k: int = Field(4, ge=2, description="number of similarity groups")
    split: Literal["per_identity", "global"] = "per_identity"
    verification: str | None = Field(None, description="verification .bin the group models are "
                                     "scored on; None: rendered from held-out ToyFaces identities")
    holdout_first: int | None = Field(None, ge=0, description="first held-out identity "
                                      "(default: one past the largest id of `data`)")
    holdout_identities: int = Field(100, ge=2)
    holdout_samples: int = Field(20, ge=2)
    holdout_pairs: int = Field(3000, ge=20, description="even: half genuine, half impostor")
    backbone: str = "iresnet18"
    width: int = Field(16, ge=4)
    input_size: int = Field(32, ge=16, le=112)
    embedding_dim: int = Field(512, ge=8)
    loss: str = Field("cosface", description="margin head of the group models (train-fr `head`)")
    epochs: int = Field(15, ge=1, description="epochs over the smallest group; every group "
                        "trains the same number of steps")
    max_steps: int | None = Field(None, ge=1, description="overrides epochs")
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.1, gt=0)
    warmup_steps: int = Field(30, ge=0)
    seed: int = 0
    fr: dict[str, Any] = Field(default_factory=dict,
                               description="further TrainFRConfig fields (margin, optimizer, ...)")
    distributed: DistributedConfig = Field(default_factory=_one_worker)
    embed_batch_size: int = Field(256, ge=1)
    rows_per_task: int = Field(1000, ge=1, description="rows per read / shard-writing task")
    embed_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(0.5, ge=0, description="≤ 0.5 on 2-core machines")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> AnalyzeCentresConfig:
        from cemiray.data.sources import Source
        from cemiray.train.fr import fr_config

        if self.holdout_pairs % 2:
            raise ValueError(f"holdout_pairs={self.holdout_pairs} must be even")
        if self.verification is None:
            if Source.parse(self.data).kind != "toyfaces":
                raise ValueError("verification: required when `data` is not a toyfaces: source "
                                 "(held-out identities are rendered only for ToyFaces)")
            self.holdout_ids()
        taken = sorted(set(self.fr) & set(FR_SET_PER_GROUP + FR_OWN_FIELDS + ("head",)))
        if taken:
            raise ValueError(f"fr: {taken} are set by this job or by its own options of the "
                             "same name (`loss` for train-fr's `head`): use those")
        fr_config(self.fr_recipe(), out="memory://check/fr", data="toyfaces:?ids=0-1&samples=2",
                  max_steps=1)
        return self

    def holdout_ids(self) -> range:
        """ToyFaces identities of the rendered verification set; none of them in `data`."""
        from cemiray.data.sources import Source

        ids = Source.parse(self.data).toy.identities
        first = max(ids) + 1 if self.holdout_first is None else self.holdout_first
        held_out = range(first, first + self.holdout_identities)
        overlap = sorted(set(held_out) & set(ids))
        if overlap:
            raise ValueError(f"holdout_first={first}: held-out identities overlap `data` "
                             f"(e.g. {overlap[:5]})")
        return held_out

    def fr_recipe(self) -> dict[str, Any]:
        """What every group's train-fr run shares (cemiray.train.fr.fr_config adds `out`,
        `data`, `verification` and `max_steps`); `fr` may add or change any other field."""
        own = {name: getattr(self, name) for name in FR_OWN_FIELDS}
        return {"eval_every": 10**9, **own, "head": self.loss, "distributed": self.distributed,
                "ray": self.ray, **self.fr}


def toyfaces_holdout(cfg: AnalyzeCentresConfig, url: str) -> dict:
    """Render a verification .bin of ToyFaces identities outside `data`, from its world."""
    from cemiray.data.sources import Source
    from cemiray.pipeline.render import RenderConfig, write_verification_bin
    from cemiray.runtime.config import WorldConfig

    toy = Source.parse(cfg.data).toy
    held_out = cfg.holdout_ids()
    world = WorldConfig(seed=toy.seed, size=toy.size, difficulty=toy.difficulty)
    render_cfg = RenderConfig(world=world, first_identity=held_out.start,
                              num_identities=cfg.holdout_identities,
                              samples_per_identity=cfg.holdout_samples, bin_pairs=cfg.holdout_pairs)
    pairs = write_verification_bin(render_cfg, url)
    return {"url": url, "identities": [held_out.start, held_out.stop - 1],
            "samples": cfg.holdout_samples, "pairs": pairs, "world": world.model_dump()}


def check_inputs(cfg: AnalyzeCentresConfig):
    """Open the model, the centres and the .bin before any Ray work, so a missing or malformed
    file fails at once with its name. Returns (recogniser, centres or None)."""
    from cemiray.data.sources import Source
    from cemiray.data.verification_bin import load_bin
    from cemiray.eval.centre_groups import CentreError, load_centres
    from cemiray.eval.verification import check_folds
    from cemiray.models.recognizer import load_recognizer

    source = Source.parse(cfg.data)
    if source.num_rows() == 0:
        raise ValueError(f"{cfg.data}: the source holds no images")
    recognizer = load_recognizer(cfg.model)
    centres = None
    if cfg.head is not None:
        centres = load_centres(cfg.head)
        if centres.shape[1] != recognizer.dim:
            raise CentreError(f"{cfg.head}: centres have {centres.shape[1]} dimensions but "
                              f"{cfg.model} embeds in {recognizer.dim}: not this model's head")
        labels = source.num_classes()
        if labels > len(centres):
            raise CentreError(f"{cfg.data}: labels up to {labels - 1} but {cfg.head} holds "
                              f"{len(centres)} centres: labels {len(centres)}-{labels - 1} have "
                              "no centre (was the head trained on this data?)")
    if cfg.verification is not None:
        if not storage.exists(cfg.verification):
            raise FileNotFoundError(f"{cfg.verification}: verification .bin not found")
        check_folds(load_bin(cfg.verification)[1], 10, where=cfg.verification)
    return recognizer, centres


def embed_source(cfg: AnalyzeCentresConfig):
    """(embeddings, labels) of every row of `data`, in source order."""
    from cemiray.data.sources import Source
    from cemiray.pipeline.embed import collect_embeddings, embed_dataset, read_face_sources

    ds, _ = read_face_sources([Source.parse(cfg.data)], rows_per_task=cfg.rows_per_task)
    ds = embed_dataset(ds, cfg.model, batch_size=cfg.embed_batch_size,
                       num_actors=(1, cfg.embed_actors), cpus_per_actor=cfg.cpus_per_actor,
                       use_gpu=cfg.distributed.use_gpu)
    embeddings, labels, _ = collect_embeddings(ds)
    return embeddings, labels.astype("int64")


def group_labels(groups) -> Any:
    """Labels renumbered 0..n−1 within each group, in the order of the source labels; −1 for
    images in no group."""
    import numpy as np

    new = np.full(len(groups.labels), -1, dtype=np.int64)
    for g in range(groups.k):
        members = groups.members(g)
        present = np.unique(groups.labels[members])
        new[members] = np.searchsorted(present, groups.labels[members])
    return new


def _write_part(item: dict) -> list[int]:
    """Rows of one part of the source, routed to one shard per group; returns rows per group.
    The rows are read a second time, so their labels are checked against the first read."""
    import numpy as np

    from cemiray.data.parquet_shards import write_shard
    uri, start = item["uri"], item["start"]
    rows = list(item["source"].iter_rows(shard=item["part"], num_shards=item["parts"]))
    if len(rows) != item["stop"] - start:
        raise ValueError(f"{uri}: part {item['part']} of {item['parts']} yielded {len(rows)} rows, "
                         f"expected {item['stop'] - start} (did the source change?)")
    group, label = np.asarray(item["group"]), np.asarray(item["label"])
    source_label, similarity = np.asarray(item["source_label"]), np.asarray(item["similarity"])
    routed: dict[int, list[dict]] = {}
    for i, row in enumerate(rows):
        if int(row["label"]) != int(source_label[i]):
            raise ValueError(f"{uri}: row {start + i} has label {row['label']} now but "
                             f"{source_label[i]} when it was embedded (did the source change?)")
        if group[i] >= 0:
            routed.setdefault(int(group[i]), []).append({
                "image": row["image"], "label": int(label[i]), "sample": int(row["sample"]),
                "source_label": int(source_label[i]), "source_index": start + i,
                "similarity": float(similarity[i]),
            })
    for g, group_rows in routed.items():
        url = storage.join(item["folders"][g], f"part-{item['part']:05d}.parquet")
        write_shard(url, group_rows, metadata={"group": g, "source": uri})
    return [len(routed.get(g, [])) for g in range(len(item["folders"]))]


def write_groups(cfg: AnalyzeCentresConfig, groups, folders: list[str]) -> list[int]:
    """Each group's images as Parquet shards, one Ray task per part of the source."""
    import ray

    from cemiray.data.sources import Source

    source = Source.parse(cfg.data)
    labels = group_labels(groups)
    n = len(groups.labels)
    parts = -(-n // cfg.rows_per_task)
    task = ray.remote(num_cpus=0.5, max_retries=2)(_write_part)
    refs = []
    for part in range(parts):
        lo, hi = n * part // parts, n * (part + 1) // parts
        refs.append(task.remote({
            "uri": cfg.data, "source": source, "part": part, "parts": parts, "start": lo,
            "stop": hi,
            "group": groups.group[lo:hi], "label": labels[lo:hi],
            "source_label": groups.labels[lo:hi], "similarity": groups.similarity[lo:hi],
            "folders": folders,
        }))
    counts = [sum(c) for c in zip(*ray.get(refs), strict=True)]
    expected = [len(groups.members(g)) for g in range(groups.k)]
    if counts != expected:
        raise RuntimeError(f"group shards hold {counts} rows, expected {expected}")
    return counts


def group_steps(cfg: AnalyzeCentresConfig, sizes: list[int]) -> int:
    """Optimizer steps of every group run: `max_steps`, or `epochs` over the smallest group."""
    d = cfg.distributed
    images_per_step = cfg.batch_size * d.num_workers * d.grad_accum
    smallest = min(sizes)
    if smallest < cfg.batch_size * d.num_workers:
        raise ValueError(f"the smallest group holds {smallest} images, fewer than one batch per "
                         f"worker ({cfg.batch_size} x {d.num_workers}); lower batch_size or k, "
                         "or add data")
    return cfg.max_steps or cfg.epochs * max(1, smallest // images_per_step)


def format_table(rows: list[dict], centre_source: str, split: str) -> str:
    title = (f"analyze-centres: {len(rows)} groups by similarity to the class centre "
             f"({centre_source}, {split} split)")
    header = (f"{'group':>5} {'images':>7} {'ids':>5} {'mean sim':>9} {'std sim':>8} "
              f"{'accuracy':>17}")
    lines = [title, header]
    for r in rows:
        lines.append(f"{r['group']:>5} {r['images']:>7} {r['identities']:>5} "
                     f"{r['mean_similarity']:>9.4f} {r['std_similarity']:>8.4f} "
                     f"{r['accuracy']:>8.4f} ± {r['accuracy_std']:.4f}")
    return "\n".join(lines)


def run(cfg: AnalyzeCentresConfig) -> dict:
    import json

    from cemiray import __version__
    from cemiray.data.sources import Source
    from cemiray.eval.centre_groups import group_by_centre_similarity
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.fr import fr_config
    from cemiray.train.fr import run as train_fr

    cfg = cfg.model_copy(update={
        "out": storage.absolute(cfg.out), "model": storage.absolute(cfg.model),
        "head": storage.absolute(cfg.head), "verification": storage.absolute(cfg.verification),
    })
    t_start = time.perf_counter()
    recognizer, centres = check_inputs(cfg)
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    for stale in ("groups", "fr", "centres.json"):
        storage.remove(storage.join(cfg.out, stale), recursive=True)
    seconds: dict[str, Any] = {}

    t0 = time.perf_counter()
    if cfg.verification is None:
        holdout = toyfaces_holdout(cfg, storage.join(cfg.out, "verification.bin"))
        verification = holdout["url"]
    else:
        holdout, verification = None, cfg.verification
    seconds["verification"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    embeddings, labels = embed_source(cfg)
    groups = group_by_centre_similarity(embeddings, labels, cfg.k, cfg.split, centres)
    seconds["embed"] = round(time.perf_counter() - t0, 1)
    print(f"analyze-centres: {len(labels)} images embedded in {seconds['embed']} s; "
          f"{groups.unassigned} left out of the per-identity split", flush=True)

    steps = group_steps(cfg, [len(groups.members(g)) for g in range(cfg.k)])
    t0 = time.perf_counter()
    folders = [storage.join(cfg.out, "groups", str(g)) for g in range(cfg.k)]
    write_groups(cfg, groups, folders)
    seconds["write"] = round(time.perf_counter() - t0, 1)

    table = groups.summary()
    seconds["train"] = []
    for row, folder in zip(table, folders, strict=True):
        g = row["group"]
        print(f"analyze-centres: group {g} ({row['images']} images, mean similarity "
              f"{row['mean_similarity']:.4f}): train-fr for {steps} steps", flush=True)
        data = Source.at("parquet", folder).uri
        fr_cfg = fr_config(cfg.fr_recipe(), out=storage.join(cfg.out, "fr", str(g)), data=data,
                           verification=verification, max_steps=steps)
        t0 = time.perf_counter()
        result = train_fr(fr_cfg)
        seconds["train"].append(round(time.perf_counter() - t0, 1))
        if "val_acc" not in result:
            raise RuntimeError(f"group {g}: train-fr reported no verification accuracy "
                               f"(see {fr_cfg.out}/metrics.jsonl)")
        row.update(accuracy=float(result["val_acc"]), accuracy_std=float(result["val_acc_std"]),
                   steps=int(result.get("step", steps)), fr_out=fr_cfg.out)

    best = max(range(cfg.k), key=lambda g: table[g]["accuracy"])
    seconds["total"] = round(time.perf_counter() - t_start, 1)
    report = {
        "groups": table,
        "best_group": best,
        "best_is_moderate": 0 < best < cfg.k - 1,
        "k": cfg.k,
        "split": cfg.split,
        "centres": groups.centre_source,
        "images": len(labels),
        "identities": len(set(labels.tolist())),
        "unassigned": groups.unassigned,
        "mean_similarity": float(groups.similarity.mean()),
        "data": cfg.data,
        "model": cfg.model,
        "model_sha256": recognizer.content_hash,
        "head": cfg.head,
        "verification": verification,
        "holdout": holdout,
        "fr": fr_cfg.model_dump(mode="json", exclude={"out", "data", "verification", "ray"}),
        "seconds": seconds,
        "config": cfg.model_dump(mode="json"),
        "cemiray_version": __version__,
    }
    storage.atomic_write_text(storage.join(cfg.out, "centres.json"),
                              json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(format_table(table, groups.centre_source, cfg.split), flush=True)
    where = "moderate" if report["best_is_moderate"] else "an end"
    print(f"analyze-centres: best group {best} ({where} of the similarity range) → "
          f"{storage.join(cfg.out, 'centres.json')} "
          f"({seconds['total']} s)", flush=True)
    return report
