"""The main job end to end at a small size, on the session's Ray cluster: ToyFaces rendered to
Parquet shards by Ray tasks, exported to RecordIO, a verification .bin, all read back."""

import json

import pytest

from cemiray.data.parquet_shards import list_shards
from cemiray.quickstart import QuickstartConfig, run


@pytest.mark.ray
def test_quickstart_small(ray_cluster, tmp_path, capsys):
    cfg = QuickstartConfig(out=str(tmp_path / "qs"), train_identities=12, test_identities=6,
                           samples_per_identity=4, verification_pairs=20, shard_identities=5)
    summary = run(cfg)
    assert summary["parquet_rows"] == 48 and summary["recordio_records"] == 48
    assert summary["parquet_shards"] == 3 and summary["classes"] == 12
    assert summary["bin_pairs"] == 20 and summary["bin_images"] == 40 and summary["bin_genuine"] == 10
    assert json.loads((tmp_path / "qs" / "config.json").read_text())["train_identities"] == 12
    assert "quickstart summary" in capsys.readouterr().out

    shards = list_shards(str(tmp_path / "qs" / "toyfaces_train" / "parquet"))
    before = {s: (tmp_path / s).stat().st_mtime_ns for s in shards}
    run(cfg)  # a rerun keeps every complete shard as it is
    assert {s: (tmp_path / s).stat().st_mtime_ns for s in shards} == before
