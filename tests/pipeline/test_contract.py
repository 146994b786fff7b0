"""cogflow.pipeline.contract: the facts every step shares, and the SQL that receives them as parameters."""

from __future__ import annotations

import pyarrow as pa

from cogflow.pipeline import db
from cogflow.pipeline.contract import (
    CLIP_FRAMES,
    FPS_RATES,
    FPS_TOKENS,
    INTERPOLATION_ROUNDS,
    SQL_PARAMS,
    STAGE2_RATES,
    VIDEO_FRAMES,
    fps_token,
    naming_hash,
)


def test_rates_tokens_and_video_length_agree() -> None:
    assert [fps_token(f) for f in (0.25, 1.0, 8.0)] == ["<fps_0.25>", "<fps_1>", "<fps_8>"]
    assert len(set(FPS_TOKENS)) == len(FPS_RATES) and set(STAGE2_RATES) <= set(FPS_RATES)
    # each round doubles the rate: the stage-2 rates are the key-frame rate times 2, 4, 8
    assert [STAGE2_RATES[0] * 2**r for r in range(INTERPOLATION_ROUNDS)] == list(STAGE2_RATES)
    assert VIDEO_FRAMES == 33 and CLIP_FRAMES == 5


def test_naming_hash_is_the_same_everywhere() -> None:
    """Pinned digests: a change here renames every trained model's data and config hash (so a flow retrains)."""
    assert naming_hash({"steps": 300, "caption": "红色的圆形"}) == "61f1e79ecadd7f9e"
    assert naming_hash([1, 2]) == "3a316d6d3226f84c"
    assert naming_hash({"b": 1, "a": 2}) == naming_hash({"a": 2, "b": 1})


def test_the_frame_rate_check_reads_the_rates_it_is_given() -> None:
    clips = pa.table(
        {
            "clip_id": ["ok", "bad_rate", "bad_token", "stage2_slow"],
            "stage": [1, 1, 1, 2],
            "fps": [0.5, 3.0, 1.0, 1.0],
            "fps_token": ["<fps_0.5>", "<fps_3>", "<fps_1.0>", "<fps_1>"],
        }
    )
    con = db.connect()
    try:
        db.register(con, clips=clips)
        found = sorted(r[0] for r in db.run(con, "checks/clips_frame_rates", **SQL_PARAMS).fetchall())
        assert found == ["bad_rate", "bad_token", "stage2_slow"]
        # a rate set with 3 fps in it (and its token) accepts the 3 fps clip
        wider = {
            **SQL_PARAMS,
            "rates": [*SQL_PARAMS["rates"], 3.0],
            "fps_tokens": [*SQL_PARAMS["fps_tokens"], "<fps_3>"],
        }
        found = sorted(r[0] for r in db.run(con, "checks/clips_frame_rates", **wider).fetchall())
        assert found == ["bad_token", "stage2_slow"]
    finally:
        con.close()
