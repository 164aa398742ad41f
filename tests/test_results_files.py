"""docs/results: every JSON parses and names no path of the machine that measured it; the
benchmarks' writer makes repository paths relative."""

import json
import re
from pathlib import Path

from cemiray.bench.common import write_result
from cemiray.runtime.machine import REPOSITORY, repository_relative

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_results_name_no_machine_path():
    files = sorted(RESULTS.glob("*.json"))
    assert files
    for f in files:
        text = f.read_text()
        json.loads(text)
        assert not re.search(r'"/(work|home|root|tmp|Users)/', text), f"{f.name}: absolute path"


def test_the_writer_makes_repository_paths_relative(tmp_path):
    inside = f"{REPOSITORY}/cemiray/assets/toyfaces/gan"
    assert repository_relative({"a": [inside, "/elsewhere/x"]}) == {
        "a": ["cemiray/assets/toyfaces/gan", "/elsewhere/x"]}
    url = write_result(str(tmp_path), "bench_x", {"gan": inside}, {"n": 1})
    assert json.loads(Path(url).read_text())["config"]["gan"] == "cemiray/assets/toyfaces/gan"
