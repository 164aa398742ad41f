"""The experiment's GAN identity source: marginal quotas become one joint quota, and the seeds
stage draws GAN samples aimed at its cells, labelled by the attribute model, their images kept
for the report's grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cemiray.apps.experiment.cache import StageCache
from cemiray.apps.experiment.config import ExperimentConfig
from cemiray.apps.experiment.loop import joint_quota, stage_seeds
from cemiray.models.attributes import AttributeSpec, save_attribute_model
from cemiray.models.stylegan import Generator
from cemiray.models.stylegan_io import save_gan
from cemiray.pipeline.seeds.table import read_seed_table


def test_marginal_quotas_become_their_product():
    joint = joint_quota({"group": {"0": 0.5, "1": 0.5}, "sex": {"0": 0.25, "1": 0.75}})
    assert joint == {"group,sex": {"0,0": 0.125, "0,1": 0.375, "1,0": 0.125, "1,1": 0.375}}
    assert joint_quota({"group": {"0": 0.0, "1": 1.0}}) == {"group": {"1": 1.0}}


def test_the_seeds_stage_draws_aimed_gan_identities(ray_cluster, tmp_path):
    from test_seeds_gan_condition import TINY, varied_predictor

    torch.manual_seed(3)
    gen = Generator("compact", **TINY)
    with torch.no_grad():
        gen.mapping.w_avg.normal_()
    gan = save_gan(str(tmp_path / "gan"), gen, meta={"step": 0})
    attr = str(tmp_path / "attr")
    save_attribute_model(varied_predictor(gen, [
        AttributeSpec("group", "categorical", classes=[0, 1, 2, 3]),
        AttributeSpec("sex", "categorical", classes=[0, 1])]), attr)
    cfg = ExperimentConfig(out=str(tmp_path / "exp"), identity_source="gan", gan=gan,
                           attribute_model=attr, candidates_per_identity=16,
                           uniqueness_threshold=1.0, recognizer_identities=4,
                           quotas={"group": {"0": 0.5, "3": 0.5}, "sex": {"0": 0.5, "1": 0.5}})
    cache = StageCache(str(tmp_path / "stages"), log=lambda _: None)
    seeds = stage_seeds(cfg, cache, cfg.recognizer, 4).result
    report = json.loads(Path(seeds["report"]).read_text())
    assert report["gan_condition"]["aimed"] == 64
    assert [q["attributes"] for q in report["quotas"]] == [["group", "sex"]]
    table = read_seed_table(seeds["table"], need_images=True)
    assert len(table) == seeds["kept"] <= 4
    assert all(s == f"gan:{gan}" for s in table.sources)
    assert {str(g) for g in table.attributes["group"]} <= {"0", "3"}
    assert all(table.images)
    again = stage_seeds(cfg, cache, cfg.recognizer, 4)
    assert again.cached


def test_the_gan_source_is_a_choice_not_a_default():
    assert ExperimentConfig().identity_source == "toyfaces"
    with pytest.raises(ValueError, match="identity_source"):
        ExperimentConfig(identity_source="ddpm")
