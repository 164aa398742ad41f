"""The shipped ToyFaces models: their files match the SHA-256 listed in their model cards, the
cards say how they were made, the folders load, and together they stay under 40 MB."""

import hashlib
import re
import shutil

import pytest

from cemiray.assets import ASSETS, TOYFACES_GENERATOR, TOYFACES_RECOGNIZER
from cemiray.assets.cards import (
    CARD_NAME,
    card_hashes,
    card_model_hash,
    file_hashes,
    publish,
    render_card,
    verify,
)
from cemiray.models.hashing import hash_lines, model_hash

FOLDERS = sorted(p for p in (ASSETS / "toyfaces").iterdir() if p.is_dir())


def test_the_embedded_default_ships_its_models():
    assert {p.name for p in FOLDERS} == {"fr", "generator", "generator_variation", "judge",
                                         "attributes", "attributes_judge", "gan"}
    assert TOYFACES_RECOGNIZER.endswith("fr") and TOYFACES_GENERATOR.endswith("generator")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_asset_files_match_their_card(folder):
    verify(folder)
    text = (folder / CARD_NAME).read_text()
    for needed in ("**command**", "**commit**", "**data**", "**wall time**", "Measured figures"):
        assert needed in text, f"{folder.name}: card lacks {needed}"
    assert not re.search(r"(?<![\w.])/(work|home|root|tmp|Users)/", text), (
        f"{folder.name}: the card names a path of the machine that made it; use paths relative "
        "to the repository")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_the_cards_lines_give_the_model_hash(folder):
    """The model hash of a folder is the SHA-256 of its card's Files lines (as `sha256sum`
    prints them), so a card names the model as `/v1/models` and the rows it generates do."""
    listed = card_hashes(folder)
    text = "".join(f"{listed[name]}  {name}\n" for name in sorted(listed))
    assert hashlib.sha256(text.encode()).hexdigest() == model_hash(str(folder))
    assert hash_lines(listed.items()) == model_hash(str(folder))
    assert card_model_hash(folder) in (None, model_hash(str(folder)))


def test_a_published_card_shows_the_model_hash_and_verify_checks_it(tmp_path):
    dest = tmp_path / "fr"
    hashes = publish(ASSETS / "toyfaces" / "fr", dest, "copy", {"command": "cp", "commit": "x"})
    assert hashes == card_hashes(ASSETS / "toyfaces" / "fr")
    assert card_model_hash(dest) == model_hash(str(dest)) == model_hash(TOYFACES_RECOGNIZER)
    verify(dest)
    wrong = render_card("copy", {}, hashes).replace(model_hash(str(dest)), "0" * 64)
    (dest / CARD_NAME).write_text(wrong)
    with pytest.raises(ValueError, match="shows model hash 000000000000"):
        verify(dest)


def test_total_size_is_under_40_mb():
    """E_id, two generators, the judge, two attribute models and the GAN: a clone stays small."""
    total = sum(p.stat().st_size for f in FOLDERS for p in f.rglob("*") if p.is_file())
    assert total < 40 * 2**20


def test_the_variation_generator_knows_its_attributes():
    from cemiray.assets import TOYFACES_GENERATOR_VARIATION
    from cemiray.diffusion import load_pipeline

    pipe = load_pipeline(TOYFACES_GENERATOR_VARIATION)
    spec = pipe.condition_encoder.variation
    assert spec.names == ["yaw", "roll", "smile", "eye_open", "light_strength", "blur",
                          "glasses", "hat", "mask"]
    assert [a.kind for a in spec.attributes][-3:] == ["binary"] * 3
    assert pipe.condition_encoder.config.variation_route == "pooled"
    card = (ASSETS / "toyfaces" / "generator_variation" / CARD_NAME).read_text()
    assert "variation_guide=cemiray/assets/toyfaces/attributes" in card
    assert "attributes_judge" not in card.split("Measured figures")[0]


def test_a_changed_or_extra_file_is_caught(tmp_path):
    copy = tmp_path / "fr"
    shutil.copytree(ASSETS / "toyfaces" / "fr", copy)
    verify(copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed"):
        verify(copy)
    (copy / "extra.json").write_text("{}")
    with pytest.raises(ValueError, match="not listed"):
        verify(copy)
    assert set(card_hashes(copy)) < set(file_hashes(copy))


def test_assets_load():
    from cemiray.diffusion import load_pipeline
    from cemiray.models.recognizer import load_recognizer

    recognizer = load_recognizer(TOYFACES_RECOGNIZER)
    assert recognizer.input_size == 32 and recognizer.dim == 512
    pipe = load_pipeline(TOYFACES_GENERATOR)
    assert pipe.unet.config.sample_size == 32


def test_the_judge_is_independent_of_e_id_and_at_least_as_accurate():
    """The judge shares no training identity, architecture or margin with E_id, and its card's
    held-out accuracy is at least E_id's on the same pairs."""
    import json

    from cemiray.assets import TOYFACES_JUDGE
    from cemiray.models.recognizer import load_recognizer

    text = (ASSETS / "toyfaces" / "judge" / CARD_NAME).read_text()
    figures = json.loads(text.split("```json")[1].split("```")[0])
    assert figures["verification_accuracy"] >= figures["e_id_on_the_same_set"][
        "verification_accuracy"]
    judge, e_id = load_recognizer(TOYFACES_JUDGE), load_recognizer(TOYFACES_RECOGNIZER)
    assert judge.content_hash != e_id.content_hash
    assert type(judge.model).__name__ == type(e_id.model).__name__  # both IResNets …
    assert len(judge.model.layer3) != len(e_id.model.layer3)  # … of different depth
    assert "ids=10000-10999" in text and "head=arcface" in text


def test_the_attribute_models_read_held_out_faces_and_are_independent():
    """Both predict group, age, sex and the variation attributes on ToyFaces identities neither
    saw, well above chance; the estimator shares no training identity or trunk depth with the
    predictor that selects."""
    import numpy as np

    from cemiray.assets import TOYFACES_ATTRIBUTES, TOYFACES_ATTRIBUTES_JUDGE
    from cemiray.data.sources import Source
    from cemiray.eval.attributes import score_predictor
    from cemiray.models.attributes import load_attribute_model

    held_out = Source.parse("toyfaces:?seed=0&ids=34000-34099&samples=2&size=32")
    models = [load_attribute_model(u) for u in (TOYFACES_ATTRIBUTES, TOYFACES_ATTRIBUTES_JUDGE)]
    for model in models:
        scores = score_predictor(model, held_out)["attributes"]
        assert scores["group"]["accuracy"] > 0.7 and scores["sex"]["accuracy"] > 0.6
        assert scores["glasses"]["accuracy"] > 0.85 and scores["yaw"]["r2"] > 0.5
    assert len(models[0].backbone.layer3) != len(models[1].backbone.layer3)
    cards = [(ASSETS / "toyfaces" / n / CARD_NAME).read_text()
             for n in ("attributes", "attributes_judge")]
    assert "ids=30000-30999" in cards[0] and "ids=32000-32999" in cards[1]
    assert "ids=32000" not in cards[0] and "ids=30000" not in cards[1]
    assert np.isfinite(models[1].specs[-1].std)


def test_the_gan_samples_faces_the_judge_sees_as_faces():
    """The shipped GAN loads (every tensor checked) and its samples reach the judge's feature
    norms of real ToyFaces faces (the seeds job's quality proxy)."""
    import numpy as np

    from cemiray.assets import TOYFACES_GAN, TOYFACES_JUDGE
    from cemiray.data.images import decode_image
    from cemiray.data.sources import Source
    from cemiray.models.recognizer import load_recognizer
    from cemiray.models.stylegan import sample_gan
    from cemiray.models.stylegan_io import load_gan

    gen, _, meta = load_gan(TOYFACES_GAN)
    assert meta["trainer"] == "train-gan" and gen.image_size == 32
    judge = load_recognizer(TOYFACES_JUDGE)
    fake = np.linalg.norm(judge.embed(sample_gan(gen, range(64)), normalize=False), axis=1)
    real = np.stack([decode_image(r["image"]) for r in Source.parse(
        "toyfaces:?seed=0&ids=36000-36063&samples=1&size=32").iter_rows()])
    real = np.linalg.norm(judge.embed(real, normalize=False), axis=1)
    assert np.mean(fake >= np.percentile(real, 1)) > 0.9
