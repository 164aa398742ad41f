"""What a person sees on the console: `cemiray quickstart` run as a user would (a subprocess, its
own Ray cluster, stdout not a terminal, the console captured) shows no Ray Data progress block and
no Ray warning a user cannot act on, and counts its duration from launch; train-fr says how the
92x112 ORL photos are fitted and trains on centre crops under resize=crop. The progress lines of
a real training run are checked in tests/test_train_fr.py; here, the line itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cemiray.data.images import encode_png, fit_square, resize
from cemiray.runtime.progress import progress_line
from cemiray.train.face_data import decode_batch

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"
RAY_DATA_BLOCK = re.compile(r"Running Dataset|Starting execution of Dataset|✔️|- ReadRange|"
                            r"Progress bars disabled|\d+/\d+ \[\d\d:\d\d")


def portrait(height: int = 112, width: int = 92) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_crop_and_pad_keep_the_aspect_and_stretch_does_not():
    image = portrait()
    crop = fit_square(image, 32, "crop")
    assert np.array_equal(crop, resize(image[10:102, :], 32))
    pad = fit_square(image, 56, "pad")
    assert pad.shape == (56, 56, 3) and not pad[:, :2].any() and not pad[:, -2:].any()
    assert np.array_equal(fit_square(image, 32, "stretch"), resize(image, 32))
    with pytest.raises(ValueError, match="resize='squash'"):
        fit_square(image, 32, "squash")


def test_decode_batch_fits_by_the_mode():
    image = portrait()
    x = decode_batch([encode_png(image)], 32, "crop")
    expected = decode_batch([encode_png(resize(image[10:102, :], 32))], 32)
    assert x.shape == (1, 3, 32, 32) and np.array_equal(x.numpy(), expected.numpy())


def test_progress_line_reads_this_runs_records():
    old = [{"event": "start", "step": 0, "total_steps": 10, "time": 0.0},
           {"event": "train", "step": 10, "img_per_s": 5.0, "loss": 1.0, "time": 9.0}]
    resumed = [{"event": "start", "step": 10, "total_steps": 100, "time": 20.0},
               {"event": "train", "step": 20, "img_per_s": 50.0, "loss": 4.5, "time": 30.0},
               {"event": "train", "step": 30, "img_per_s": 52.0, "loss": 4.0, "time": 40.0}]
    line = progress_line("train-fr", old + resumed, 75.0)
    assert line.startswith("train-fr: step 30/100 (30%), 52.0 img/s, loss 4")
    assert "ETA 1 min 10 s" in line and "[1 min 15 s]" in line
    assert "waiting for the first step" in progress_line("train-fr", old + resumed[:1], 3.0)
    assert "starting workers" in progress_line("train-fr", [], 3.0)


@pytest.mark.ray
@pytest.mark.skipif(not ORL.is_dir(), reason="the ORL copy beside the project is missing")
def test_orl_faces_are_centre_cropped_and_train_fr_says_so(ray_cluster):
    """The 92x112 ORL photos under resize=crop: train-fr's note names the source size and the
    fitting, and the batches its loop trains on are the centre crops."""
    from cemiray.data.images import decode_image
    from cemiray.data.sources import Source
    from cemiray.train.face_data import face_dataset, fit_note

    ds = face_dataset(Source.parse(f"orl:{ORL}"), parts=1)
    note = fit_note("train-fr", ds, 32, "crop")
    assert note == ("train-fr: warning: images are 92x112; each is centre-cropped to a square, "
                    "then resized to 32x32 (resize=crop)")
    assert "stretched (aspect not kept" in fit_note("train-fr", ds, 32, "stretch")
    assert fit_note("train-fr", ds, 92, "crop") is not None
    row = ds.take(1)[0]
    image = decode_image(row["image"])
    assert image.shape[:2] == (112, 92)
    trained_on = decode_batch([row["image"]], 32, "crop")
    expected = decode_batch([encode_png(resize(image[10:102, :], 32))], 32)
    assert np.array_equal(trained_on.numpy(), expected.numpy())


def test_quickstart_log_holds_no_ray_data_block(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CEMIRAY_PROGRESS"}
    command = [sys.executable, "-m", "cemiray.cli", "quickstart", f"out={tmp_path / 'qs'}",
               "loop=false", "train_identities=12", "test_identities=6",
               "samples_per_identity=4", "verification_pairs=20", "shard_identities=5"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    console = done.stdout + done.stderr
    print(console)
    assert done.returncode == 0, console[-3000:]
    assert "quickstart data" in console and "parquet_rows" in console
    assert not RAY_DATA_BLOCK.search(console), RAY_DATA_BLOCK.search(console)
    assert "Token authentication" not in console
    assert re.search(r"quickstart: done in \d+ s since launch", console), console
