"""Content-addressed stages: a stage runs once per (config, input bytes); an unfinished attempt is
thrown away and redone; the same weights in another folder hash the same."""

import json
import shutil

import pytest

from cemiray.apps.experiment.cache import STAGE_FILE, StageCache
from cemiray.models.hashing import model_hash


def _model(folder, weights: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"name": "m"}')
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


def test_a_stage_runs_once_per_config_and_input(tmp_path):
    model = _model(tmp_path / "model", b"weights-1")
    cache = StageCache(str(tmp_path / "stages"), log=lambda _: None)
    calls = []

    def work(out):
        calls.append(out)
        return {"value": len(calls)}

    first = cache.run("train", {"lr": 0.1}, work, {"model": model})
    again = cache.run("train", {"lr": 0.1}, work, {"model": model})
    assert (first.cached, again.cached) == (False, True) and again.result == {"value": 1}
    assert len(calls) == 1 and again.out == first.out
    other = cache.run("train", {"lr": 0.2}, work, {"model": model})
    assert not other.cached and other.out != first.out
    _model(tmp_path / "model", b"weights-2")  # same path, new bytes: a new key
    changed = cache.run("train", {"lr": 0.1}, work, {"model": model})
    assert not changed.cached and changed.key != first.key and len(calls) == 3
    with open(f"{changed.out}/{STAGE_FILE}") as f:
        record = json.load(f)
    assert record["config"] == {"lr": 0.1} and record["inputs"] == {"model": model}


def test_an_unfinished_attempt_is_discarded_and_redone(tmp_path):
    cache = StageCache(str(tmp_path / "stages"), log=lambda _: None)

    def crash(out):
        with open(out + "/partial.bin", "wb") as f:
            f.write(b"half")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        cache.run("gen", {"n": 1}, crash)
    folder = next((tmp_path / "stages").iterdir())
    assert (folder / "partial.bin").exists() and not (folder / STAGE_FILE).exists()

    def work(out):
        assert not (tmp_path / "stages" / folder.name / "partial.bin").exists()
        return {"ok": True}

    done = cache.run("gen", {"n": 1}, work)
    assert done.result == {"ok": True} and not done.cached
    assert (folder / STAGE_FILE).exists()


def test_model_hash_depends_on_bytes_not_place(tmp_path):
    """The cache names its inputs by the project's one model hash."""
    a = _model(tmp_path / "a", b"w")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert model_hash(a) == model_hash(str(b))
    (b / "model.safetensors").write_bytes(b"x")
    assert model_hash(a) != model_hash(str(b))
    (b / "model.safetensors").write_bytes(b"w")
    (b / "MODEL_CARD.md").write_text("# about it")  # a card describes the model, is not it
    assert model_hash(a) == model_hash(str(b))
    (b / "config.json").rename(b / "renamed.json")  # names are content too
    assert model_hash(a) != model_hash(str(b))
    with pytest.raises(FileNotFoundError, match="not found"):
        model_hash(str(tmp_path / "missing"))
    c = tmp_path / "third" / "c"
    shutil.copytree(a, c)
    cache = StageCache(str(tmp_path / "stages"), log=lambda _: None)
    assert cache.key("s", {}, {"model": a}) == cache.key("s", {}, {"model": str(c)})
    assert cache.key("s", {}, {"model": a}) != cache.key("s", {}, {"model": str(b)})
