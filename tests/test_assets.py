"""The shipped ToyFaces models: their files match the SHA-256 listed in their model cards, the
cards say how they were made, the folders load, and together they stay under 20 MB."""

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


def test_the_embedded_default_ships_a_recogniser_a_generator_and_a_judge():
    assert {p.name for p in FOLDERS} == {"fr", "generator", "judge"}
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


def test_total_size_is_under_20_mb():
    total = sum(p.stat().st_size for f in FOLDERS for p in f.rglob("*") if p.is_file())
    assert total < 20 * 2**20


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
