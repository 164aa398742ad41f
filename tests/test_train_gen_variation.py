"""train-gen with a variation condition: the source's own nuisances and a user's variation table
reach the generator; the spec measured from the data is saved with it; named requests are
checked against it; a generator trained without variation starts a run with it unchanged."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from helpers import TINY

from cemiray.assets import TOYFACES_ATTRIBUTES
from cemiray.data.attribute_tables import read_table
from cemiray.diffusion import load_pipeline
from cemiray.diffusion.pipeline import CemiFacePipeline, save_pipeline
from cemiray.diffusion.presets import build_generator, build_sample_scheduler, resolve_preset
from cemiray.diffusion.variation import BINARY, CONTINUOUS, VariationSpec
from cemiray.models import get_backbone
from cemiray.models.serialization import save_model_folder
from cemiray.train.diffusion_modules import GeneratorTrainModule
from cemiray.train.engine import read_metrics
from cemiray.train.gen import TrainGenConfig, load_generator_weights, run


def spec_of(**columns):
    return VariationSpec.measure(list(columns), {k: np.asarray(v, dtype=float)
                                                 for k, v in columns.items()})


def test_the_spec_is_measured_and_requests_are_checked():
    rng = np.random.default_rng(0)
    spec = spec_of(yaw=rng.normal(0, 10, 1000), glasses=(rng.random(1000) < 0.2).astype(float))
    yaw, glasses = spec.attributes
    assert yaw.kind == CONTINUOUS and glasses.kind == BINARY
    assert yaw.std == pytest.approx(10, rel=0.1) and yaw.low < -20 and yaw.high > 20
    encoded = spec.encode_requests([{"yaw": 0.0, "glasses": True}, None, {"glasses": 0}])
    assert encoded[0, 1] == 1.0 and encoded[2, 1] == -1.0 and math.isnan(encoded[2, 0])
    assert np.isnan(encoded[1]).all()
    assert encoded[0, 0] == pytest.approx(-yaw.mean / yaw.std)
    for bad, field in (({"tilt": 1.0}, "variation\\[0\\].tilt"),
                       ({"yaw": 500.0}, "variation\\[0\\].yaw: 500.0 lies outside"),
                       ({"yaw": "left"}, "variation\\[0\\].yaw: a continuous"),
                       ({"glasses": 0.5}, "variation\\[0\\].glasses: a binary"),
                       ({"yaw": float("nan")}, "variation\\[0\\].yaw")):
        with pytest.raises(ValueError, match=field):
            spec.encode_requests([bad])
    with pytest.raises(ValueError, match="expected an object"):
        spec.encode_requests([[1.0, 2.0]])
    with pytest.raises(ValueError, match="no training row"):
        spec_of(hat=[math.nan, math.nan])
    with pytest.raises(ValueError, match="cannot be learned"):
        spec_of(hat=[0.0, 0.0, 0.0])
    assert VariationSpec.from_config(spec.to_config()) == spec


def test_a_generator_without_variation_starts_one_with_it(tmp_path):
    preset = resolve_preset("tiny", **TINY)
    unet, encoder = build_generator(preset)
    save_pipeline(CemiFacePipeline(unet, encoder, build_sample_scheduler(preset)),
                  str(tmp_path / "plain"))
    spec = spec_of(yaw=[-10.0, 0.0, 10.0])
    varied = resolve_preset(preset, num_variation_attrs=1, variation_spec=spec.to_config(),
                            variation_route="both")
    module = GeneratorTrainModule(*build_generator(varied), None, None)
    load_generator_weights(module, str(tmp_path / "plain"))
    for name, p in unet.state_dict().items():
        assert torch.equal(module.unet.state_dict()[name], p), name
    ids = torch.nn.functional.normalize(torch.randn(3, TINY["id_dim"]), dim=1)
    m = torch.zeros(3)
    plain_out = encoder.eval()(ids, m)
    module.condition_encoder.eval()
    started = module.condition_encoder(ids, m, variation=torch.randn(3, 1))
    torch.testing.assert_close(started.pooled, plain_out.pooled)
    torch.testing.assert_close(started.tokens[:, :plain_out.tokens.shape[1]], plain_out.tokens)

    other = resolve_preset(preset, sim_dim=4)
    with pytest.raises(ValueError, match="does not fit the preset"):
        load_generator_weights(GeneratorTrainModule(*build_generator(other), None, None),
                               str(tmp_path / "plain"))


def test_variation_table_is_read_and_refused_naming_what_is_wrong(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("key,glasses,yaw\n0/0,1,12.5\n0/1,0,\n")
    table = read_table(str(path), "key", ["glasses", "yaw"])
    assert table["0/0"] == {"glasses": 1.0, "yaw": 12.5} and table["0/1"]["glasses"] == 0.0
    assert math.isnan(table["0/1"]["yaw"])
    assert read_table(str(path), "key", ["hat", "yaw"])["0/0"] == {"yaw": 12.5}
    with pytest.raises(ValueError, match="none of the variation attributes"):
        read_table(str(path), "key", ["hat"])
    with pytest.raises(ValueError, match="no key column 'id'"):
        read_table(str(path), "id", ["yaw"])
    path.write_text("key,glasses\n0/0,1\n0/0,0\n")
    with pytest.raises(ValueError, match="'0/0' appears more than once"):
        read_table(str(path), "key", ["glasses"])
    path.write_text("key,glasses\n0/0,\"1\"\n0/1,\"true\"\n")  # label-attr's JSON text
    assert read_table(str(path), "key", ["glasses"]) == {"0/0": {"glasses": 1.0},
                                                         "0/1": {"glasses": 1.0}}
    path.write_text("key,glasses\n0/0,yes\n")
    with pytest.raises(ValueError, match="'yes' is not a number"):
        read_table(str(path), "key", ["glasses"])
    with pytest.raises(ValueError, match="no such file"):
        read_table(str(tmp_path / "missing.parquet"), "key", ["glasses"])
    with pytest.raises(ValueError, match="without variation"):
        TrainGenConfig(recognizer="r", variation_table=str(path))


@pytest.mark.ray
def test_train_gen_learns_from_the_sources_nuisances_and_a_table(ray_cluster, tmp_path):
    recognizer = str(tmp_path / "eid")
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", input_size=16, num_features=32)
    save_model_folder(backbone, recognizer, backbone.config)
    # a user's table gives `lit` (not a ToyFaces name) for half the images of 6 identities
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "lit"])
        for identity in range(6):
            for sample in range(0, 6, 2):
                writer.writerow([f"{identity}/{sample}", (identity + sample) % 3 * 0.25])
    out = tmp_path / "gen"
    cfg = TrainGenConfig(
        out=str(out), data="toyfaces:?seed=0&ids=0-5&samples=6&size=16", recognizer=recognizer,
        preset_overrides=TINY, batch_size=8, max_steps=6, lr=3e-3, warmup_steps=0, log_every=1,
        read_parts=2, genuine_per_image=4, impostors_per_image=4, min_bin_pairs=4,
        variation=["yaw", "glasses", "lit"], variation_table=str(table),
        variation_route="both", variation_guide=TOYFACES_ATTRIBUTES,
        distributed={"num_workers": 1, "checkpoint_every": 6, "torch_threads": 1},
    )
    run(cfg)
    records = read_metrics(str(out / "metrics.jsonl"))
    assert [r for r in records if r["event"] == "done"]
    # the attribute loss ran (yaw and glasses are read by the guide; `lit` is not)
    train = [r for r in records if r["event"] == "train"]
    assert train and all(r["variation"] > 0 for r in train)
    pipe = load_pipeline(str(out / "generator"))
    spec = pipe.condition_encoder.variation
    assert spec.names == ["yaw", "glasses", "lit"]
    assert [a.kind for a in spec.attributes] == [CONTINUOUS, BINARY, CONTINUOUS]
    assert spec.attributes[2].low == 0.0 and spec.attributes[2].high == pytest.approx(0.5)
    assert pipe.condition_encoder.config.variation_route == "both"
    # the variation reached training: its output layer left zero
    assert pipe.condition_encoder.variation_out.weight.abs().sum() > 0

    ids = torch.nn.functional.normalize(torch.randn(2, 32), dim=1)
    requests = [{"yaw": 10.0, "glasses": True}, {"lit": 0.25}]
    a = pipe(ids, 0.5, [1, 2], variation=requests, num_inference_steps=2).images
    b = pipe(ids, 0.5, [1, 2], num_inference_steps=2).images
    assert a.shape == (2, 16, 16, 3) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="variation\\[1\\].hat: unknown"):
        pipe(ids, 0.5, [1, 2], variation=[None, {"hat": True}], num_inference_steps=2)


def test_the_guide_reads_the_requested_attributes_from_x0():
    """On real ToyFaces images the attribute loss is lower for their true variation than for
    the opposite one, and its gradient reaches the image."""
    from cemiray.data import pixels
    from cemiray.data.toyfaces import ToyFacesWorld
    from cemiray.diffusion.variation_guide import VariationGuide
    from cemiray.models.attributes import load_attribute_model

    world = ToyFacesWorld(seed=0, size=32)
    images, nuisances = world.render_batch(list(range(70000, 70032)), [0] * 32)
    spec = spec_of(yaw=np.array([n["yaw"] for n in nuisances]),
                   glasses=np.array([n["glasses"] for n in nuisances] + [0, 1]))
    guide = VariationGuide(load_attribute_model(TOYFACES_ATTRIBUTES), spec, max_t=500)
    assert guide.names == ["yaw", "glasses"]
    truth = spec.encode_columns({"yaw": np.array([n["yaw"] for n in nuisances]),
                                 "glasses": np.array([float(n["glasses"]) for n in nuisances])})
    x = pixels.from_numpy(images).requires_grad_(True)
    t = torch.zeros(32, dtype=torch.long)
    right = guide(x, torch.from_numpy(truth), t)
    wrong = guide(x, torch.from_numpy(-truth), t)
    assert right < 0.5 * wrong
    right.backward()
    assert x.grad.abs().sum() > 0
    assert guide(x, torch.from_numpy(truth), torch.full((32,), 900)) == 0  # above max_t
    with pytest.raises(ValueError, match="reads none of"):
        VariationGuide(load_attribute_model(TOYFACES_ATTRIBUTES), spec_of(lit=[0.0, 0.5, 1.0]))
