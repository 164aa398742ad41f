"""`cemiray label-attr` (pipeline part): a whole face dataset labelled by an attribute model.

A Ray Data pass: read tasks turn the source's parts into rows (cemiray.runtime.reader), labeller
actors (each holding the attribute model once) predict every attribute of every image, and the
rows, without their images, are written as Parquet: `index` (the row's place in the source),
`key` (class_name/filename for an image folder, identity/sample for ToyFaces, else label/sample
or the index: what a user joins on), `label`, and one column per attribute (with `<name>:p`, the
class probabilities, when asked). A real dataset so labelled can be filtered, balanced or used as
a variation table. Where the source carries an attribute itself, the report gives the model's
agreement with it. The files land in a temporary folder that is renamed to OUT/labels only when
the pass has finished, so no partial result carries the final name."""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
from pydantic import Field

from cemiray.assets import TOYFACES_ATTRIBUTES
from cemiray.data import storage
from cemiray.data.row_keys import row_key
from cemiray.runtime.config import JobConfig, RayConfig


class LabelAttrConfig(JobConfig):
    out: str = "runs/label_attr"
    data: str = Field(..., description="face source URI to label")
    model: str = Field(TOYFACES_ATTRIBUTES, description="attribute model folder (train-attr)")
    probabilities: bool = Field(False, description="also write each categorical attribute's "
                                "class probabilities (`<name>:p`)")
    resize: str = Field("stretch", description="stretch | crop | pad, to the model's input size")
    rows_per_task: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)
    num_actors_max: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    use_gpu: bool = False
    gpus_per_actor: float = Field(0.5, gt=0, le=1)
    ray: RayConfig = Field(default_factory=RayConfig)


def keyed_rows(names: list[str]):
    """A read transform: each row's image, index, key, label and the source's own values of the
    predicted attributes (JSON text under `truth:<name>`, None when absent)."""
    from cemiray.eval.attributes import truth_value

    def transform(part, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            item = {"index": row["index"], "key": row_key(row), "label": int(row.get("label", -1)),
                    "image": row["image"]}
            for name in names:
                value = truth_value(row, name)
                item[f"truth:{name}"] = None if value is None else json.dumps(value)
            out.append(item)
        return out

    return transform


class Labeller:
    """A Ray Data actor: loads the attribute model once and predicts every row's attributes."""

    def __init__(self, model: str, device: str, resize: str, probabilities: bool) -> None:
        from cemiray.models.attributes import load_attribute_model

        self.model = load_attribute_model(model, device)
        self.device, self.resize, self.probabilities = device, resize, probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cemiray.data.images import decode_image
        from cemiray.eval.attributes import predict_images

        images = [decode_image(bytes(b), where=f"row {i}") for i, b in zip(
            batch["index"], batch["image"], strict=True)]
        pred = predict_images(self.model, images, resize=self.resize, device=self.device)
        out = {k: batch[k] for k in batch if k != "image"}
        for spec in self.model.specs:
            values = pred[spec.name]
            out[spec.name] = np.array([json.dumps(v.item() if isinstance(v, np.generic) else v)
                                       for v in values], dtype=object) \
                if spec.kind == "categorical" else values.astype(np.float32)
            if self.probabilities and spec.kind == "categorical":
                out[f"{spec.name}:p"] = list(pred[f"{spec.name}:p"].astype(np.float32))
        return out


def summarise(folder: str, specs) -> dict:
    """Per attribute: the predicted distribution (categorical) or mean and std (continuous), and
    the agreement with the source's own values where it has them."""
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(folder)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table()
    out: dict = {"rows": table.num_rows, "attributes": {}}
    for spec in specs:
        values = table.column(spec.name).to_pylist()
        truth = table.column(f"truth:{spec.name}").to_pylist()
        # the source's own values, JSON text (a column no row has comes back as nulls)
        known = [(v, t) for v, t in zip(values, truth, strict=True) if isinstance(t, str)]
        if spec.kind == "categorical":
            names, counts = np.unique(values, return_counts=True)
            item = {"shares": {str(json.loads(n)): float(c / len(values))
                               for n, c in zip(names, counts, strict=True)}}
            if known:
                item["agreement"] = float(np.mean([json.loads(v) == json.loads(t)
                                                   for v, t in known]))
        else:
            x = np.asarray(values, dtype=np.float64)
            item = {"mean": float(x.mean()), "std": float(x.std())}
            if known:
                item["mae"] = float(np.mean([abs(v - json.loads(t)) for v, t in known]))
        item["labelled_in_source"] = len(known)
        out["attributes"][spec.name] = item
    return out


def run(cfg: LabelAttrConfig) -> dict:
    import ray.data

    from cemiray.data.sources import Source
    from cemiray.models.attributes import load_attribute_model
    from cemiray.runtime.cluster import init_ray
    from cemiray.runtime.reader import read_sources

    t0 = time.perf_counter()
    source = Source.parse(cfg.data)
    model_url = storage.absolute(cfg.model)
    specs = load_attribute_model(model_url).specs  # checked before Ray starts
    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out), "model": model_url,
                                 "data": source.uri})
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    final = storage.join(cfg.out, "labels")
    if storage.exists(final):
        raise FileExistsError(f"{final}: already labelled; choose another out or remove it")
    init_ray(cfg.ray)
    ds, _ = read_sources([source], rows_per_task=cfg.rows_per_task, columns=None,
                         transform=keyed_rows([s.name for s in specs]))
    device = "cuda" if cfg.use_gpu else "cpu"
    labelled = ds.map_batches(
        Labeller, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors_max),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
        batch_size=cfg.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"model": model_url, "device": device, "resize": cfg.resize,
                               "probabilities": cfg.probabilities})
    temporary = storage.join(cfg.out, f".labels-{uuid.uuid4().hex[:8]}")
    labelled.write_parquet(temporary)
    fs, path = storage.filesystem(temporary)
    fs.mv(path, storage.filesystem(final)[1], recursive=True)
    report = {"source": source.uri, "model": model_url, **summarise(final, specs),
              "seconds": round(time.perf_counter() - t0, 1)}
    storage.atomic_write_text(storage.join(cfg.out, "label_report.json"),
                              json.dumps(report, indent=1) + "\n")
    print(f"label-attr: {report['rows']} images labelled in {report['seconds']} s → {final}",
          flush=True)
    return {**report, "labels": final}
