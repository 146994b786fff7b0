"""Every probe is bounded in time, as split's decoder is: a file that keeps the probe busy past
COGFLOW_PROBE_TIMEOUT_S is cut off as `probe_timeout` (its child process killed), and the other files of the run are
probed as usual.

The slow input is a real file: 8 GiB of zeros (sparse, so it takes no disk), which the probe reads whole to hash it
(several seconds at any speed) before FFmpeg refuses it. What is slow does not matter to the bound: the whole probe
runs in a child process that is killed at the deadline, wherever it is (hashing, demuxing, decoding in FFmpeg)."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import write_csv

from cogflow.pipeline.ingest import ingest
from cogflow.pipeline.settings import load_settings


def test_a_probe_that_takes_too_long_is_cut_off_and_remembered(tmp_path: Path, sample_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("COGFLOW_PROBE_TIMEOUT_S", "500ms")
    monkeypatch.setenv("COGFLOW_MAX_BYTES", "16GiB")
    huge = tmp_path / "huge.mp4"
    with open(huge, "wb") as f:
        f.truncate(8 * 2**30)
    good = tmp_path / "good.mp4"
    shutil.copy(next((sample_dir / "videos").glob("*.mp4")), good)
    manifest = write_csv(
        tmp_path / "m.csv",
        [
            {"video": "huge.mp4", "caption": "eight gigabytes of nothing"},
            {"video": "good.mp4", "caption": "a moving shape"},
        ],
    )
    settings = load_settings(home=str(tmp_path / "home"))

    summary = ingest(str(manifest), settings)
    assert summary.outcomes == {"accepted": 1, "probe_timeout": 1}  # not unreadable_container, after the whole hash

    again = ingest(str(manifest), settings)  # a reason in the file's bytes: not probed again (--retry-rejects does)
    assert again.sources_probed == 0 and again.outcomes == {"accepted": 1, "probe_timeout": 1}
