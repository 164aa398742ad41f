"""Typed face sources (no Ray cluster): parsing once into `Source`, the canonical `.uri` round
trip, paths made absolute at parse time, the constructors, errors that name the URI, and the
reader's plan and read-one-part task run in this process."""

from __future__ import annotations

import os
import pickle
from functools import partial

import pytest

from cemiray.data.orl import DEFAULT_ORL_ROOT
from cemiray.data.sources import Source, SourceError, ToyFacesParams, parse_ids
from cemiray.runtime.reader import ReadPart, plan_reads, read_part

TOY = "toyfaces:?seed=3&ids=5-7,20&samples=2&size=16&difficulty=0.5"


@pytest.mark.parametrize("uri", [
    TOY,
    "toyfaces:?seed=0&ids=0-499&samples=20&size=32&difficulty=1.0",
    "parquet:/data/faces",
    "recordio:/data/rec/train.rec",
    "imagefolder:/data/folder",
    "orl:/data/orl_faces",
    "bin:/data/lfw.bin",
    "parquet:s3://bucket/faces",
    "parquet:memory://faces/set",
])
def test_canonical_uri_round_trips(uri):
    source = Source.parse(uri)
    assert source.uri == uri and str(source) == uri
    assert Source.parse(source.uri) == source
    assert Source.parse(source) is source
    assert pickle.loads(pickle.dumps(source)) == source


def test_relative_and_home_paths_become_absolute_at_parse_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = Source.parse("parquet:runs/render/parquet")
    assert source.url == str(tmp_path / "runs" / "render" / "parquet")
    assert source.uri == f"parquet:{tmp_path}/runs/render/parquet"
    home = Source.parse("imagefolder:~/faces")
    assert home.url == os.path.join(os.path.expanduser("~"), "faces")
    assert Source.at("bin", "v.bin").url == str(tmp_path / "v.bin")
    monkeypatch.chdir("/")
    assert source.url == str(tmp_path / "runs" / "render" / "parquet")  # fixed once parsed


def test_orl_defaults_to_the_copy_beside_the_project():
    assert Source.parse("orl:") == Source.at("orl", DEFAULT_ORL_ROOT)


def test_toyfaces_fields_are_typed_with_defaults():
    source = Source.parse("toyfaces:?ids=3,7,10-12&samples=4")
    assert source.kind == "toyfaces" and source.url == ""
    assert source.toy == ToyFacesParams(ids=(range(3, 4), range(7, 8), range(10, 13)), samples=4,
                                        seed=0, size=32, difficulty=1.0)
    assert source.toy.identities == [3, 7, 10, 11, 12] == parse_ids("3,7,10-12")
    assert source.uri == "toyfaces:?seed=0&ids=3,7,10-12&samples=4&size=32&difficulty=1.0"
    assert (source.num_rows(), source.num_classes()) == (20, 5)


def test_toyfaces_uri_is_canonical():
    """Parameter order, adjacent ranges and number spellings do not change the source."""
    a = Source.parse("toyfaces:?samples=2&difficulty=1&ids=0-3,4-9&size=32&seed=0")
    b = Source.parse("toyfaces:?seed=0&ids=0-9&samples=2&size=32&difficulty=1.0")
    assert a == b and a.uri == b.uri == "toyfaces:?seed=0&ids=0-9&samples=2&size=32&difficulty=1.0"
    assert Source.parse("toyfaces:?ids=9,3-5&samples=1").toy.ids_text == "9,3-5"


def test_toyfaces_constructor_equals_the_parsed_uri():
    built = Source.toyfaces(range(1000, 1050), samples=10, seed=2, size=24, difficulty=0.5)
    assert built == Source.parse("toyfaces:?seed=2&ids=1000-1049&samples=10&size=24&difficulty=0.5")
    assert Source.toyfaces([5, 6, 7, 20], samples=2, seed=3, size=16, difficulty=0.5) == \
        Source.parse(TOY)
    assert Source.toyfaces("5-7,20", samples=2, seed=3, size=16, difficulty=0.5).uri == TOY


@pytest.mark.parametrize("make, message", [
    (lambda: Source.toyfaces(range(0), samples=1), "non-empty"),
    (lambda: Source.toyfaces(range(3), samples=0), "samples=0 is not a int ≥ 1"),
    (lambda: Source.toyfaces([1, 2, 1], samples=1), "distinct"),
    (lambda: Source.toyfaces(range(3), samples=1, difficulty=-1), "difficulty=-1.0"),
    (lambda: Source.at("toyfaces", "/x"), "Source.toyfaces"),
    (lambda: Source.at("hdf5", "/x"), "one of"),
    (lambda: Source.at("parquet", ""), "parquet needs a URL"),
])
def test_constructors_check_as_parsing_does(make, message):
    with pytest.raises(SourceError, match=message):
        make()


@pytest.mark.parametrize("uri, message", [
    ("faces.parquet", "expected '<kind>:<url>'"),
    ("toyfaces:?ids=0-9&samples=3&size=0", "size='0' is not a int ≥ 1"),
    ("toyfaces:?ids=0-3,2-5&samples=3", "distinct"),
    ("toyfaces:?ids=0-9&samples=3&difficulty=hard", "difficulty='hard'"),
    ("recordio:", "recordio needs a URL"),
])
def test_bad_input_names_the_uri(uri, message):
    with pytest.raises(SourceError, match=message) as err:
        Source.parse(uri)
    assert repr(uri) in str(err.value)


def test_read_plan_partitions_sources_and_reads_a_part_in_process():
    sources = [Source.parse(TOY), Source.parse("toyfaces:?ids=0-2&samples=1&size=16")]
    plan, spans = plan_reads(sources, rows_per_task=3, constants=[{"flip": True}, {"flip": False}])
    assert spans == [range(8), range(8, 11)]
    assert [(p.part, p.parts, p.offset, p.start, p.stop) for p in plan] == [
        (0, 3, 0, 0, 2), (1, 3, 0, 2, 5), (2, 3, 0, 5, 8), (0, 1, 8, 0, 3)]
    assert all(p.source is sources[0] for p in plan[:3])
    rows = [r for p in plan for r in read_part(p, columns=("image", "label"))]
    assert [r["index"] for r in rows] == list(range(11))
    assert [r["label"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2]
    assert [r["flip"] for r in rows] == [True] * 8 + [False] * 3
    whole = list(sources[0].iter_rows())
    assert [r["image"] for r in rows[:8]] == [r["image"] for r in whole]
    assert set(rows[0]) == {"index", "image", "label", "flip"}
    plain = read_part(plan[3], columns=("label",), index=False)
    assert plain == [{"label": 0, "flip": False}, {"label": 1, "flip": False},
                     {"label": 2, "flip": False}]


def _first_two(part: ReadPart, rows: list[dict], tag: str) -> list[dict]:
    return [{"index": r["index"], "tag": tag} for r in rows[:2]]


def test_read_part_applies_a_transform_and_checks_the_row_count():
    (part,), _ = plan_reads([Source.parse(TOY)], parts=1)
    assert read_part(part, transform=partial(_first_two, tag="x")) == [
        {"index": 0, "tag": "x"}, {"index": 1, "tag": "x"}]
    short = ReadPart(part.source, 0, 1, 0, 0, 9)
    with pytest.raises(ValueError, match=r"yielded 8 rows, expected 9"):
        read_part(short)


def test_reader_takes_parsed_sources_only():
    with pytest.raises(TypeError, match="Source.parse"):
        plan_reads([TOY], parts=1)
    with pytest.raises(ValueError, match="rows_per_task or parts"):
        plan_reads([Source.parse(TOY)])
