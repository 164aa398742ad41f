"""The shipped ToyFaces models: their files match the SHA-256 listed in their model cards, the
cards say how they were made, the folders load, and together they stay under 20 MB."""

import shutil

import pytest

from cemiray.assets import ASSETS, TOYFACES_GENERATOR, TOYFACES_RECOGNIZER
from cemiray.assets.cards import CARD_NAME, card_hashes, file_hashes, verify

FOLDERS = sorted(p for p in (ASSETS / "toyfaces").iterdir() if p.is_dir())


def test_the_embedded_default_ships_a_recogniser_and_a_generator():
    assert {p.name for p in FOLDERS} == {"fr", "generator"}
    assert TOYFACES_RECOGNIZER.endswith("fr") and TOYFACES_GENERATOR.endswith("generator")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_asset_files_match_their_card(folder):
    verify(folder)
    text = (folder / CARD_NAME).read_text()
    for needed in ("**command**", "**commit**", "**data**", "**wall time**", "Measured figures"):
        assert needed in text, f"{folder.name}: card lacks {needed}"


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
