"""`cemiray seeds`: the identities a synthetic dataset is made of, as a seed table
(cemiray.pipeline.seeds.table) for `cemiray generate`.

Candidates come from three kinds of source, in this order:
- `inquiry`: face datasets (any source URI); the first image of each label is a 1-shot inquiry
  image (CemiFace's default: new identities of a world the recogniser never saw);
- `embedding_files`: identity embeddings given directly (.npy N x D, or Parquet with an
  `embedding` column and optional attribute columns);
- `generator`: samples of an unconditional face generator (`cemiray train-uncond`), sample k
  drawn from noise seed `generator_seed + k`, so no identity comes from a real person.

One Ray Data pass does all the heavy work: read tasks turn dataset parts into image rows,
sampler actors turn generator seeds into images, and embedder actors (each holding the
conditioning recogniser and the judge once) add the unit embedding, the raw feature norm and the
judge's embedding. The same pass embeds the reference sets: the training data whose identity
centres the leakage filter compares with (summed per label as batches arrive, never held whole)
and the labelled data an attribute probe is fitted on.

The driver then filters, in a fixed order (the sources' order, the sources taken in turn, or a
seeded shuffle): quality (raw norm within bounds), leakage (max cosine to a training centre
< τ), then greedy uniqueness under the judge (max cosine to every seed kept before < τ)
together with the attribute quotas, until `num_identities` seeds are kept
(cemiray.eval.seed_filters, blockwise). Uniqueness and leakage are measured in the judge's
space (the conditioning recogniser's by default). Missing attributes (generator samples have
none) are predicted by a probe fitted on `probe_data`.

Outputs: `out/seeds.parquet` (seed_id = seed_id_offset + the candidate's position in the
concatenated sources), `out/seeds_report.json` (counts per stage, leakage audit, quota target
vs achieved, probe accuracy), `out/seeds_audit.parquet` (every candidate with the stage that
decided it, its feature norm, leakage_max / leakage_nearest and uniqueness_max) and
`out/config.json`.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

DEFAULT_INQUIRY = "toyfaces:?seed=0&ids=1000000-1000999&samples=1&size=32"
DEFAULT_TRAINING = "toyfaces:?seed=0&ids=0-499&samples=5&size=32"
SEED, CENTRES, PROBE = 1, 2, 4
ROLE_NAMES = ((SEED, "seeds"), (CENTRES, "centres"), (PROBE, "probe"))
TABLE_COLUMNS = ("seed_id", "embedding", "source", "image", "source_label", "feature_norm",
                 "leakage_max", "leakage_nearest", "uniqueness_max", "attributes_from")


class SeedsConfig(JobConfig):
    out: str = "runs/seeds"
    recognizer: str = Field(..., description="conditioning recogniser: its unit embeddings go "
                                             "into the table (cemiray folder, .pth?arch=, .onnx)")
    judge: str | None = Field(None, description="recogniser for uniqueness and leakage "
                                                "(default: the conditioning one)")
    inquiry: list[str] = Field(default_factory=lambda: [DEFAULT_INQUIRY],
                               description="face source URIs; first image per label")
    embedding_files: list[str] = Field(default_factory=list,
                                       description=".npy or Parquet (`embedding` column) files")
    generator: str | None = Field(None, description="unconditional generator folder")
    generator_samples: int = Field(0, ge=0)
    generator_steps: int = Field(50, ge=1)
    generator_sampler: Literal["ddim", "ddpm"] = "ddim"
    generator_seed: int = Field(0, ge=0, description="sample k uses noise seed generator_seed+k")
    generator_batch: int = Field(32, ge=1, description="images per sampler call")
    attributes: list[str] = Field(default_factory=lambda: ["group", "age", "sex"],
                                  description="attribute columns carried into the table")
    order: Literal["given", "interleaved", "shuffled"] = Field(
        "given", description="candidates in source order, one from each source in turn, or "
                             "shuffled with order_seed")
    order_seed: int = 0
    num_identities: int | None = Field(None, ge=1, description="seeds to keep (None: all)")
    require_target: bool = Field(True, description="fail when num_identities or a quota cell "
                                                   "cannot be filled (the report is written)")
    uniqueness_threshold: float = Field(0.3, ge=-1, le=1)
    leakage_threshold: float = Field(0.3, ge=-1, le=1)
    leakage_data: str | None = Field(DEFAULT_TRAINING, description="training face source whose "
                                     "identity centres seeds must stay away from")
    leakage_centres: str | None = Field(None, description="centres file instead (.npy, Parquet)")
    quality_min_norm: float | None = Field(None, ge=0)
    quality_max_norm: float | None = Field(None, ge=0)
    quotas: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='{"group": {"0": 0.25, ...}} or joint '
                                          '{"group,sex": {"0,1": 0.125, ...}}')
    probe_data: str | None = Field(None, description="labelled face source with the attributes, "
                                                     "to predict missing ones from embeddings")
    probe_kind: Literal["centroid", "logistic"] = "centroid"
    keep_images: bool = True
    seed_id_offset: int = Field(0, ge=0)
    block_size: int = Field(1024, ge=1, description="candidates per similarity block")
    batch_size: int = Field(64, ge=1, description="images per embedder call")
    rows_per_task: int = Field(500, ge=1)
    num_actors_min: int = Field(1, ge=1)
    num_actors_max: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, ge=0, description="≤ 0.5 on a 2-core machine")
    use_gpu: bool = False
    gpus_per_actor: float = Field(0.5, gt=0, le=1, description="sampler and embedder actors "
                                                              "share a GPU at 0.5")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _centres_replace_data(cls, data: Any) -> Any:
        """A centres file replaces the default leakage data (it is not a second reference)."""
        if isinstance(data, dict) and data.get("leakage_centres") and "leakage_data" not in data:
            return {**data, "leakage_data": None}
        return data

    @field_validator("quotas", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k): ({str(c): f for c, f in v.items()} if isinstance(v, dict) else v)
                for k, v in value.items()}

    @model_validator(mode="after")
    def _check(self) -> SeedsConfig:
        if not (self.inquiry or self.embedding_files or self.generator):
            raise ValueError("no seed sources: give inquiry, embedding_files or generator")
        if bool(self.generator) != (self.generator_samples > 0):
            raise ValueError("give generator together with generator_samples > 0")
        if self.leakage_data and self.leakage_centres:
            raise ValueError("give leakage_data or leakage_centres, not both")
        if self.quotas and self.num_identities is None:
            raise ValueError("quotas need num_identities (the counts are fractions of it)")
        if self.num_actors_max < self.num_actors_min:
            raise ValueError("num_actors_max is below num_actors_min")
        if self.embedding_files and self.judge and self.judge != self.recognizer:
            raise ValueError("embedding_files hold no images for the judge to embed; leave "
                             "judge unset (the conditioning recogniser judges) or drop them")
        lo, hi = self.quality_min_norm, self.quality_max_norm
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"quality_min_norm {lo} exceeds quality_max_norm {hi}")
        from cemiray.pipeline.generate.job import OUTPUT_COLUMNS

        clash = sorted(set(self.attributes) & set(TABLE_COLUMNS + OUTPUT_COLUMNS))
        if clash:
            raise ValueError(f"attributes {clash} clash with columns of the seed table or of "
                             "the generated rows")
        for name in self.quotas:
            missing = [a.strip() for a in name.split(",")
                       if a.strip() not in self.attributes]
            if missing:
                raise ValueError(f"quota {name!r}: attribute(s) {missing} are not in "
                                 f"attributes={self.attributes}")
        return self


def _scalar(value: Any, where: str) -> Any:
    """An attribute value as a plain scalar (int, float, str, bool or None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    raise ValueError(f"{where}: attribute value {value!r} is not a scalar (int, float, str, "
                     "bool)")


def _read_part(item: dict) -> list[dict]:
    """Rows of one part of one face source; seed sources keep only the first row of each label
    in the part (the driver keeps the first over all parts)."""
    from cemiray.data.sources import parse_source

    source = parse_source(item["uri"])
    rows, seen, count = [], set(), 0
    for i, row in enumerate(source.iter_rows(shard=item["part"], num_shards=item["parts"])):
        count += 1
        label = int(row["label"])
        if item["first_only"] and label in seen:
            continue
        seen.add(label)
        where = f"{item['uri']} row {item['start'] + i}"
        attrs = {a: _scalar(row[a], f"{where} column {a!r}") for a in item["attributes"]
                 if a in row}
        rows.append({"index": item["offset"] + item["start"] + i, "source": item["source"],
                     "roles": item["roles"], "image": row["image"], "label": label,
                     "attributes": json.dumps(attrs)})
    if count != item["stop"] - item["start"]:
        raise ValueError(f"{item['uri']}: part {item['part']} of {item['parts']} yielded "
                         f"{count} rows, expected {item['stop'] - item['start']}")
    return rows


class UncondSampler:
    """A Ray Data actor: loads the unconditional generator once, samples one image per row."""

    def __init__(self, url: str, steps: int, sampler: str, device: str) -> None:
        from cemiray.diffusion.unconditional import load_unconditional

        self.gen = load_unconditional(url, device)
        self.steps, self.sampler, self.device = steps, sampler, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.data.images import encode_png
        from cemiray.diffusion.unconditional import sample_unconditional

        images = sample_unconditional(self.gen, [int(s) for s in batch["noise_seed"]],
                                      self.steps, self.sampler, self.device)
        n = len(images)
        return {"index": batch["index"], "source": batch["source"], "roles": batch["roles"],
                "image": np.array([encode_png(im) for im in images], dtype=object),
                "label": batch["label"], "attributes": np.array(["{}"] * n, dtype=object)}


class SeedEmbedder:
    """A Ray Data actor: loads the conditioning recogniser (and the judge) once; adds the unit
    `embedding`, the raw `feature_norm` and, with a judge, `judge_embedding`. Images of rows
    that are not seeds (or all, without keep_images) are dropped here."""

    def __init__(self, recognizer: str, judge: str | None, device: str,
                 keep_images: bool) -> None:
        from cemiray.models.recognizer import load_recognizer

        self.recognizer = load_recognizer(recognizer, device)
        self.judge = load_recognizer(judge, device) if judge else None
        self.keep_images = keep_images

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.data.images import decode_image

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


class Candidates:
    """Seed candidates gathered on the driver: conditioning embeddings, judge embeddings (only
    with a judge of its own), raw norms, images and attributes."""

    def __init__(self, judged: bool):
        self.judged = judged
        self.index: list[np.ndarray] = []
        self.source: list[np.ndarray] = []
        self.label: list[np.ndarray] = []
        self.embedding: list[np.ndarray] = []
        self.space: list[np.ndarray] = []
        self.norm: list[np.ndarray] = []
        self.images: list[Any] = []
        self.attrs: list[dict] = []

    def add(self, index, source, label, embedding, space, norm, images, attrs) -> None:
        self.index.append(np.asarray(index, np.int64))
        self.source.append(np.asarray(source, np.int64))
        self.label.append(np.asarray(label, np.int64))
        self.embedding.append(np.asarray(embedding, np.float32))
        if self.judged:
            self.space.append(np.asarray(space, np.float32))
        self.norm.append(np.asarray(norm, np.float32))
        self.images.extend(images)
        self.attrs.extend(attrs)

    def finish(self) -> dict[str, Any]:
        """Arrays in index order, the first row of each (source, label) of an inquiry source."""
        index = np.concatenate(self.index)
        order = np.argsort(index, kind="stable")
        source, label = np.concatenate(self.source)[order], np.concatenate(self.label)[order]
        index = index[order]
        repeated = index[1:][index[1:] == index[:-1]]
        if repeated.size:
            raise ValueError(f"rows with index {np.unique(repeated)[:10].tolist()} came back "
                             "more than once")
        first = np.ones(len(index), dtype=bool)
        seen: set[tuple[int, int]] = set()
        for i, key in enumerate(zip(source.tolist(), label.tolist(), strict=True)):
            first[i] = key not in seen
            seen.add(key)
        pick = order[first]
        embedding = np.concatenate(self.embedding)[pick]
        return {
            "index": index[first], "source": source[first], "label": label[first],
            "embedding": embedding,
            "space": np.concatenate(self.space)[pick] if self.judged else embedding,
            "norm": np.concatenate(self.norm)[pick],
            "images": [self.images[i] for i in pick],
            "attrs": [self.attrs[i] for i in pick],
        }


class CentreSums:
    """Per-label sums of unit embeddings, accumulated batch by batch (O(labels x D))."""

    def __init__(self, num_labels: int, dim: int):
        self.sums = np.zeros((num_labels, dim), dtype=np.float64)
        self.counts = np.zeros(num_labels, dtype=np.int64)

    def add(self, labels: np.ndarray, embeddings: np.ndarray) -> None:
        if labels.min() < 0:
            raise ValueError(f"training data: label {int(labels.min())} is negative; centres "
                             "need identity labels")
        top = int(labels.max()) + 1
        if top > len(self.sums):
            size = max(top, 2 * len(self.sums))
            sums = np.zeros((size, self.sums.shape[1]), dtype=np.float64)
            counts = np.zeros(size, dtype=np.int64)
            sums[:len(self.sums)], counts[:len(self.counts)] = self.sums, self.counts
            self.sums, self.counts = sums, counts
        np.add.at(self.sums, labels, embeddings)
        np.add.at(self.counts, labels, 1)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        from cemiray.eval.seed_filters import unit_rows

        labels = np.flatnonzero(self.counts)
        return unit_rows(self.sums[labels], "training centres"), labels


def read_embedding_file(url: str, dim: int, attributes: list[str]
                        ) -> tuple[np.ndarray, list[dict]]:
    """(N x D float32 embeddings, attribute dicts) of a .npy or Parquet embedding file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = storage.read_bytes(url)
    attrs: list[dict] = []
    if url.endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{url}: not a readable .npy array ({exc})") from exc
        attrs = [{} for _ in range(len(array))]
    else:
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several types on damaged files
            raise ValueError(f"{url}: not a readable Parquet file ({exc})") from exc
        if "embedding" not in table.column_names:
            raise ValueError(f"{url}: no 'embedding' column (columns: {table.column_names})")
        column = table.column("embedding")
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)):
            raise ValueError(f"{url}: column 'embedding' is {column.type}, expected a list")
        values = column.to_pylist()
        bad = [i for i, v in enumerate(values) if v is None or len(v) != len(values[0])]
        if bad:
            raise ValueError(f"{url}: row {bad[0]}: embedding is null or of another length")
        array = np.asarray(values, dtype=np.float32)
        present = [a for a in attributes if a in table.column_names]
        cols = {a: table.column(a).to_pylist() for a in present}
        attrs = [{a: _scalar(cols[a][i], f"{url} row {i} column {a!r}") for a in present}
                 for i in range(len(values))]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{url}: embeddings of shape {array.shape}, expected N x {dim} (the "
                         "conditioning recogniser's dimension)")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"{url}: row {int(bad[0])}: embedding is zero or not finite")
    return (array / norms[:, None]).astype(np.float32), attrs


def read_centres_file(url: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit centres K x D, their labels) from a .npy (labels = rows) or Parquet file
    (`embedding`, optional `label`)."""
    from cemiray.eval.seed_filters import unit_rows

    centres, _ = read_embedding_file(url, dim, [])
    labels = np.arange(len(centres))
    if not url.endswith(".npy"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
        if "label" in table.column_names:
            labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    return unit_rows(centres, url), labels


def plan_sources(cfg: SeedsConfig,
                 file_rows: list[int]) -> tuple[list[dict], list[dict], list[dict]]:
    """Read items of every face source, the seed sources in order (name, kind, first index,
    rows) and the reference sources (leakage centres and/or probe data, read once each)."""
    from cemiray.data.sources import parse_source

    items: list[dict] = []

    def reads(uri: str, roles: int, first_only: bool, number: int, offset: int) -> int:
        source = parse_source(uri)
        n = source.num_rows()
        if n == 0:
            raise ValueError(f"{uri}: the source holds no images")
        parts = -(-n // cfg.rows_per_task)
        for part in range(parts):
            items.append({"uri": str(source), "part": part, "parts": parts, "offset": offset,
                          "start": n * part // parts, "stop": n * (part + 1) // parts,
                          "roles": roles, "first_only": first_only, "source": number,
                          "attributes": list(cfg.attributes)})
        return n

    sources: list[dict] = []
    offset = 0
    for uri in cfg.inquiry:
        n = reads(uri, SEED, True, len(sources), offset)
        sources.append({"name": str(parse_source(uri)), "kind": "inquiry", "offset": offset,
                        "rows": n})
        offset += n
    for url, n in zip(cfg.embedding_files, file_rows, strict=True):
        sources.append({"name": f"embeddings:{url}", "kind": "embeddings", "offset": offset,
                        "rows": n, "url": url})
        offset += n
    if cfg.generator:
        sources.append({"name": f"uncond:{cfg.generator}", "kind": "generator",
                        "offset": offset, "rows": cfg.generator_samples})
        offset += cfg.generator_samples
    roles: dict[str, int] = {}
    for uri, role in ((cfg.leakage_data, CENTRES), (cfg.probe_data, PROBE)):
        if uri:
            source = parse_source(uri)
            if source.num_classes() < 1:
                raise ValueError(f"{uri}: reference data needs identity labels (a .bin has none)")
            roles[str(source)] = roles.get(str(source), 0) | role
    references = []
    for uri, role in roles.items():
        number = len(sources) + len(references)
        n = reads(uri, role, False, number, offset)
        references.append({"name": uri, "roles": role, "offset": offset, "rows": n})
        offset += n
    return items, sources, references


def build_dataset(cfg: SeedsConfig, items: list[dict], sources: list[dict]):
    """The Ray Data pass: reads and generator samples, then the embedder actors."""
    import ray.data

    parts = []
    device = "cuda" if cfg.use_gpu else "cpu"
    if items:
        reads = ray.data.from_items(items, override_num_blocks=len(items))
        parts.append(reads.flat_map(_read_part, num_cpus=min(0.5, max(cfg.cpus_per_actor, 0.1))))
    generator = [s for s in sources if s["kind"] == "generator"]
    if generator:
        number, first = sources.index(generator[0]), generator[0]["offset"]
        rows = [{"index": first + k, "source": number, "roles": SEED, "label": k,
                 "noise_seed": cfg.generator_seed + k} for k in range(cfg.generator_samples)]
        blocks = -(-len(rows) // cfg.generator_batch)
        samples = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            UncondSampler,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors_max),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
            batch_size=cfg.generator_batch,
            batch_format="numpy",
            fn_constructor_kwargs={"url": cfg.generator, "steps": cfg.generator_steps,
                                   "sampler": cfg.generator_sampler, "device": device},
        )
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


def consume(ds, candidates: Candidates):
    """Route the embedded rows: seeds to `candidates`, centre rows into per-label sums, probe
    rows into arrays. Returns (CentreSums or None, probe rows or None)."""
    sums: CentreSums | None = None
    probe: dict[str, list] = {"embedding": [], "label": [], "attrs": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        roles = np.asarray(batch["roles"], dtype=np.int64)
        space = batch["judge_embedding"] if "judge_embedding" in batch else batch["embedding"]
        seed = np.flatnonzero(roles & SEED)
        if seed.size:
            candidates.add(batch["index"][seed], batch["source"][seed], batch["label"][seed],
                           batch["embedding"][seed], space[seed], batch["feature_norm"][seed],
                           [bytes(batch["image"][i]) or None for i in seed],
                           [json.loads(batch["attributes"][i]) for i in seed])
        centre = np.flatnonzero(roles & CENTRES)
        if centre.size:
            if sums is None:
                sums = CentreSums(0, space.shape[1])
            sums.add(np.asarray(batch["label"][centre], np.int64), space[centre])
        rows = np.flatnonzero(roles & PROBE)
        if rows.size:
            probe["embedding"].append(batch["embedding"][rows])
            probe["label"].append(np.asarray(batch["label"][rows], np.int64))
            probe["attrs"].extend(json.loads(batch["attributes"][i]) for i in rows)
    if probe["embedding"]:
        probe = {"embedding": np.concatenate(probe["embedding"]),
                 "label": np.concatenate(probe["label"]), "attrs": probe["attrs"]}
    else:
        probe = None
    return sums, probe


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fill_attributes(cfg: SeedsConfig, attrs: list[dict], embedding: np.ndarray,
                    probe: dict | None) -> tuple[dict[str, list], list[str], dict]:
    """Attribute columns of the candidates: their own values, missing ones predicted by a probe
    fitted on the probe data. Returns (columns, where each row's values came from, report)."""
    from cemiray.eval.seed_filters import probe_with_holdout

    columns = {a: [row.get(a) for row in attrs] for a in cfg.attributes}
    probed = [set() for _ in attrs]
    report: dict = {}
    for name, values in columns.items():
        missing = [i for i, v in enumerate(values) if _missing(v)]
        if not missing or probe is None:
            continue
        known = [i for i, row in enumerate(probe["attrs"]) if not _missing(row.get(name))]
        if not known:
            report[name] = {"skipped": f"probe data {cfg.probe_data} has no {name!r} values"}
            continue
        model, report[name] = probe_with_holdout(
            probe["embedding"][known], [probe["attrs"][i][name] for i in known],
            probe["label"][known], kind=cfg.probe_kind, seed=cfg.order_seed)
        for i, value in zip(missing, model.predict(embedding[missing]), strict=True):
            values[i] = value
            probed[i].add(name)
        report[name]["predicted"] = len(missing)
    origin = []
    for row, names in zip(attrs, probed, strict=True):
        own = any(not _missing(row.get(a)) for a in cfg.attributes)
        origin.append("+".join(k for k, on in (("source", own), ("probe", bool(names))) if on)
                      or "none")
    return columns, origin, report


def write_audit(url: str, columns: dict[str, Any]) -> None:
    """One row per candidate with the stage that decided it (quality, leakage, duplicate,
    quota_full, quota_outside, not_examined, kept) and the measures behind it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array(list(v) if isinstance(v, list) else v)
                      for k, v in columns.items()})
    with storage.atomic_open(url, "wb") as f:
        pq.write_table(table, f)


def candidate_order(cfg: SeedsConfig, source: np.ndarray) -> np.ndarray:
    """The order the greedy filters see the candidates (which are sorted by index)."""
    n = len(source)
    if cfg.order == "shuffled":
        return np.random.default_rng(cfg.order_seed).permutation(n)
    if cfg.order == "interleaved":
        rank = np.zeros(n, dtype=np.int64)
        for k in np.unique(source):
            rows = np.flatnonzero(source == k)
            rank[rows] = np.arange(len(rows))
        return np.lexsort((source, rank))
    return np.arange(n)


def _source_counts(rows: np.ndarray, source: np.ndarray, sources: list[dict]) -> dict[str, int]:
    counts = Counter(source[rows].tolist())
    return {s["name"]: int(counts.get(k, 0)) for k, s in enumerate(sources)}


def run(cfg: SeedsConfig) -> dict:
    from cemiray.diffusion.unconditional import MARKER_NAME
    from cemiray.eval.seed_filters import (
        OUTCOMES,
        greedy_select,
        nearest_centres,
        parse_quotas,
        quality_mask,
        summary_stats,
    )
    from cemiray.models.recognizer import load_recognizer
    from cemiray.pipeline.generate.job import OUTPUT_COLUMNS
    from cemiray.pipeline.seeds.table import read_seed_table, write_seed_table
    from cemiray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    recognizer = storage.absolute(cfg.recognizer)
    judge = storage.absolute(cfg.judge)
    cfg = cfg.model_copy(update={
        "out": storage.absolute(cfg.out),
        "recognizer": recognizer,
        "judge": None if judge == recognizer else judge,
        "generator": storage.absolute(cfg.generator),
        "leakage_centres": storage.absolute(cfg.leakage_centres),
        "embedding_files": [storage.absolute(u) for u in cfg.embedding_files],
    })
    # Open every input before any Ray work, so a missing or malformed file fails at once.
    dim = load_recognizer(cfg.recognizer).dim
    space_dim = load_recognizer(cfg.judge).dim if cfg.judge else dim
    files = [read_embedding_file(u, dim, cfg.attributes) for u in cfg.embedding_files]
    if cfg.generator and not storage.exists(storage.join(cfg.generator, MARKER_NAME)):
        raise FileNotFoundError(f"{cfg.generator}: not an unconditional generator folder (no "
                                f"{MARKER_NAME}; train one with `cemiray train-uncond`)")
    centres = centre_labels = None
    if cfg.leakage_centres:
        centres, centre_labels = read_centres_file(cfg.leakage_centres, space_dim)
    items, sources, references = plan_sources(cfg, [len(f[0]) for f in files])
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)

    candidates = Candidates(judged=cfg.judge is not None)
    sums = probe = None
    if items or cfg.generator:
        init_ray(cfg.ray)
        sums, probe = consume(build_dataset(cfg, items, sources), candidates)
    if cfg.leakage_data:
        if sums is None:
            raise ValueError(f"{cfg.leakage_data}: no rows came back for the leakage centres")
        centres, centre_labels = sums.centres()
    for (emb, attrs), src in zip(files, [s for s in sources if s["kind"] == "embeddings"],
                                 strict=True):
        number = sources.index(src)
        candidates.add(src["offset"] + np.arange(len(emb)), np.full(len(emb), number),
                       np.arange(len(emb)), emb, emb, np.full(len(emb), np.nan),
                       [None] * len(emb), attrs)
    if not candidates.index:
        raise ValueError("no seed candidates came back from the sources")
    data = candidates.finish()
    t_embed = time.perf_counter() - t0

    n = len(data["index"])
    order = candidate_order(cfg, data["source"])
    quality = quality_mask(data["norm"], cfg.quality_min_norm, cfg.quality_max_norm)
    leak_max = np.full(n, np.nan, dtype=np.float32)
    leak_nearest = np.full(n, -1, dtype=np.int64)
    leak_ok = np.ones(n, dtype=bool)
    if centres is not None:
        leak_max, rows = nearest_centres(data["space"], centres, block=cfg.block_size)
        leak_nearest = np.asarray(centre_labels)[rows]
        leak_ok = leak_max < cfg.leakage_threshold
    columns, origin, probe_report = fill_attributes(cfg, data["attrs"], data["embedding"], probe)
    passing = order[(quality & leak_ok)[order]]
    quotas = parse_quotas(cfg.quotas, cfg.num_identities) if cfg.quotas else []
    cells = None
    if quotas:
        sub = {a: [columns[a][i] for i in passing] for a in cfg.attributes}
        try:
            cells = np.stack([q.cell_index(sub) for q in quotas], axis=1)
        except ValueError as exc:
            raise ValueError(f"{exc}; give probe_data (a labelled source with the attribute) "
                             "to predict it from embeddings") from None
    selection = greedy_select(data["space"][passing], cfg.uniqueness_threshold, cells,
                              [q.counts for q in quotas] or None, limit=cfg.num_identities,
                              block=cfg.block_size)
    kept = passing[selection.kept]
    t_filter = time.perf_counter() - t0 - t_embed

    seed_ids = cfg.seed_id_offset + data["index"][kept]
    attribute_columns = {a: [columns[a][i] for i in kept] for a in cfg.attributes}
    unique_max = np.full(n, np.nan, dtype=np.float32)
    unique_max[passing] = selection.max_similarity
    attribute_columns.update({
        "source_label": data["label"][kept].tolist(),
        "feature_norm": data["norm"][kept].astype(float).tolist(),
        "leakage_max": leak_max[kept].astype(float).tolist(),
        "leakage_nearest": leak_nearest[kept].tolist(),
        "uniqueness_max": unique_max[kept].astype(float).tolist(),
        "attributes_from": [origin[i] for i in kept],
    })
    images = [data["images"][i] for i in kept] if cfg.keep_images else None
    if images is not None and all(im is None for im in images):
        images = None

    counts = selection.counts()
    quota_reports = [q.report(cells[selection.kept, k]) for k, q in enumerate(quotas)]
    reached = cfg.num_identities is None or len(kept) == cfg.num_identities
    filled = all(r["filled"] for r in quota_reports)
    rejected_leak = np.flatnonzero(quality & ~leak_ok)
    worst = rejected_leak[np.argsort(-leak_max[rejected_leak], kind="stable")[:10]]
    table_url = storage.join(cfg.out, "seeds.parquet")
    report = {
        "sources": [{k: v for k, v in s.items() if k != "url"} for s in sources],
        "references": [{**r, "roles": [name for bit, name in ROLE_NAMES if r["roles"] & bit]}
                       for r in references],
        "candidates": {"total": n, "by_source": _source_counts(np.arange(n), data["source"],
                                                                sources)},
        "stages": {
            "candidates": n,
            "quality_rejected": int((~quality).sum()),
            "after_quality": int(quality.sum()),
            "leakage_rejected": int(rejected_leak.size),
            "after_leakage": int(passing.size),
            "duplicate": counts["duplicate"],
            "quota_full": counts["quota_full"],
            "quota_outside": counts["quota_outside"],
            "not_examined": counts["not_examined"],
            "kept": len(kept),
        },
        "kept_by_source": _source_counts(kept, data["source"], sources),
        "quality": {"min_norm": cfg.quality_min_norm, "max_norm": cfg.quality_max_norm,
                    "unmeasured": int(np.isnan(data["norm"]).sum()),
                    "feature_norm": summary_stats(data["norm"])},
        "leakage": {
            "threshold": cfg.leakage_threshold,
            "reference": cfg.leakage_data or cfg.leakage_centres,
            "centres": 0 if centres is None else len(centres),
            "rejected": int(rejected_leak.size),
            "leakage_max": summary_stats(leak_max),
            "kept_leakage_max": summary_stats(leak_max[kept]),
            "worst_rejected": [{"seed_id": int(cfg.seed_id_offset + data["index"][i]),
                                "source": sources[data["source"][i]]["name"],
                                "leakage_max": float(leak_max[i]),
                                "leakage_nearest": int(leak_nearest[i])} for i in worst],
        },
        "uniqueness": {"threshold": cfg.uniqueness_threshold,
                       "judge": cfg.judge or cfg.recognizer, "order": cfg.order,
                       "kept_max_similarity": summary_stats(unique_max[kept])},
        "quotas": quota_reports,
        "probe": probe_report,
        "attributes_from": dict(Counter(origin[i] for i in kept)),
        "num_identities": cfg.num_identities,
        "target_reached": bool(reached),
        "quotas_filled": bool(filled),
        "seconds": {"embedding_pass": round(t_embed, 2), "filters": round(t_filter, 2)},
        "table": table_url,
        "audit": storage.join(cfg.out, "seeds_audit.parquet"),
    }
    stage = np.full(n, "quality", dtype=object)
    stage[quality & ~leak_ok] = "leakage"
    stage[passing] = np.asarray(OUTCOMES, dtype=object)[selection.outcome]
    write_audit(report["audit"], {
        "seed_id": cfg.seed_id_offset + data["index"],
        "source": [sources[k]["name"] for k in data["source"]],
        "source_label": data["label"], "outcome": stage.tolist(),
        "feature_norm": data["norm"], "leakage_max": leak_max,
        "leakage_nearest": leak_nearest, "uniqueness_max": unique_max,
        "attributes_from": origin, **columns})
    report_url = storage.join(cfg.out, "seeds_report.json")
    if len(kept) == 0 or (cfg.require_target and not (reached and filled)):
        report["table"] = None
        storage.atomic_write_text(report_url, json.dumps(report, indent=2) + "\n")
        short = {r["attributes"][0] if len(r["attributes"]) == 1 else ",".join(r["attributes"]):
                 r["shortfall"] for r in quota_reports if r["shortfall"]}
        wanted = cfg.num_identities or "at least 1"
        raise RuntimeError(f"seeds: kept {len(kept)} seeds, wanted {wanted}"
                           f"{'; quota shortfall ' + json.dumps(short) if short else ''}; "
                           f"add candidates or relax the filters (report: {report_url})")
    write_seed_table(table_url, seed_ids, data["embedding"][kept],
                     [sources[k]["name"] for k in data["source"][kept]],
                     attribute_columns, images)
    read_seed_table(table_url, expected_dim=dim, reserved=OUTPUT_COLUMNS)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    storage.atomic_write_text(report_url, json.dumps(report, indent=2) + "\n")
    st = report["stages"]
    leak = report["leakage"]["leakage_max"]
    print(f"seeds: {n} candidates → quality {st['after_quality']} → leakage "
          f"{st['after_leakage']} (max {leak.get('max', float('nan')):.3f}, "
          f"{st['leakage_rejected']} rejected) → kept {st['kept']} (duplicates "
          f"{st['duplicate']}, quota full {st['quota_full']}); quotas filled {filled}; "
          f"{report['seconds']['total']} s → {table_url}", flush=True)
    return {"table": table_url, "report": report_url, "kept": len(kept),
            "stages": st, "quotas_filled": filled, "seconds": report["seconds"]["total"]}
