"""cogflow.model.evaluation.diagnose: the Wilson interval's arithmetic, the copy-the-neighbour baseline on hand-made codes, pure-background
tiles of a drawn frame, the layout check (training loss == cached decoding fed the true codes) on tiny random
models of both stages, and `cogflow diagnose` end to end on a real tokenized lake with ground truth and random-weight
stages of the debug config (training them would triple the file's time and tell these checks nothing more)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import copy_sample, lake_settings, write_csv
from mlflow.tracking import MlflowClient

from cogflow.flows.cli import main
from cogflow.model import tracking
from cogflow.model.cogvideo import transformer as transformers
from cogflow.model.cogvideo.layout import Layout
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec, TransformerConfig
from cogflow.model.evaluation.baselines import (
    CodePredictions,
    background_tiles,
    copy_previous,
    layout_check,
    neighbour_baseline,
)
from cogflow.model.evaluation.diagnose import parse_variant
from cogflow.model.evaluation.measures import Z95, wilson
from cogflow.pipeline.sample_data import VideoSpec, render_frame


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and a busy 2-core machine punishes threads that spin (the
    debug frame tokenizer trains in 4 s on one thread, in 45 s on two against another job)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic


def test_wilson_interval() -> None:
    z2 = Z95**2
    assert wilson(0, 10) == (0.0, pytest.approx(z2 / (10 + z2), rel=1e-12))  # closed form at 0 successes
    assert wilson(10, 10) == (pytest.approx(10 / (10 + z2), rel=1e-12), 1.0)
    lo, hi = wilson(5, 10)
    half = Z95 * math.sqrt(0.25 / 10 + z2 / 400) / (1 + z2 / 10)
    assert (lo, hi) == (pytest.approx(0.5 - half, abs=1e-15), pytest.approx(0.5 + half, abs=1e-15))
    # R: prop.test(3, 20, correct = FALSE)$conf.int
    assert wilson(3, 20) == (pytest.approx(0.0523687, abs=1e-7), pytest.approx(0.3604189, abs=1e-7))
    assert wilson(17, 20) == pytest.approx((1 - 0.3604189, 1 - 0.0523687), abs=1e-7)  # symmetric
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson(*bad)


def test_copy_the_neighbour_baseline_on_hand_made_codes() -> None:
    codes = np.array(
        [
            [[1, 2, 3, 4], [1, 2, 0, 4], [1, 2, 0, 4], [9, 9, 9, 9], [9, 9, 9, 1]],
            [[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 0], [0, 0, 0, 7], [7, 7, 7, 7]],
        ]
    )  # (R=2, 5, n=4)
    assert copy_previous(codes, [1, 2, 3, 4]) == {1: (3 + 4, 8), 2: (4 + 0, 8), 3: (0 + 3, 8), 4: (3 + 1, 8)}
    # stage 2 predicts frames 1 and 3: the model right on every code of frame 1 and on 2 of 8 of frame 3
    time = np.repeat([1, 3], 8)
    row, index = np.tile(np.repeat([0, 1], 4), 2), np.tile(np.arange(4), 4)
    target = codes[row, time, index]
    argmax = target.copy()
    argmax[8:14] = -1
    predictions = CodePredictions(2, "val", ["a", "b"], codes, row, time, index, target, argmax, np.zeros(16))
    got = {m.key: m for m in neighbour_baseline(predictions)}
    assert got["neighbour/stage2/frame1/model"].value == 1.0 and got["neighbour/stage2/frame1/model"].reference == 7 / 8
    assert got["neighbour/stage2/frame3/model"].value == 2 / 8 and got["neighbour/stage2/frame3/copy"].value == 3 / 8
    whole = got["neighbour/stage2/model"]
    assert (whole.value, whole.n, whole.reference) == (10 / 16, 16, 10 / 16)
    assert (whole.lo, whole.hi) == wilson(10, 16)


def test_pure_background_tiles_of_a_drawn_frame() -> None:
    spec = VideoSpec("t", "square", "red", "growing", "navy", 24, 160, 160, 4.0, "mp4", "en", "")
    tiles = background_tiles(render_frame(spec, 2.0), 10)  # a square of side ~36 px in the middle, 16 px tiles
    assert tiles.shape == (10, 10) and tiles[0].all() and tiles[:, 0].all() and not tiles[4:6, 4:6].any()
    assert 80 <= tiles.sum() <= 96


def test_variants_parse_into_sampling_options() -> None:
    assert parse_variant("default").options == {}
    assert parse_variant("temperature=0.3+top_k=5").options == {"temperature": 0.3, "top_k": 5}
    for bad in ("temp=1", "guidance", "temperature=0"):
        with pytest.raises(ValueError):
            parse_variant(bad)


# ---------------------------------------------------------------------------------------------------------------
# The layout check on tiny random models


def token_rows(count: int, lay: Layout, codebook: int, vocab: int, seed: int = 0) -> dict[str, list]:
    """Token rows as the lake holds them (data.COLUMNS): random captions of varied length, random codes."""
    g = np.random.default_rng(seed)
    rows: dict[str, list] = {
        c: [] for c in ("clip_id", "split", "text_ids", "text_mask", "fps_token_id", "frame_codes")
    }
    for i in range(count):
        real = int(g.integers(1, lay.text_len + 1))
        mask = [False] * (lay.text_len - real) + [True] * real
        rows["clip_id"].append(f"c{i}")
        rows["split"].append("val")
        rows["text_ids"].append([int(t) if m else 0 for t, m in zip(g.integers(10, vocab, lay.text_len), mask)])
        rows["text_mask"].append(mask)
        rows["fps_token_id"].append(int(g.integers(4, 10)))
        rows["frame_codes"].append(g.integers(0, codebook, (5, lay.frame_len)).astype("<i2").tobytes())
    return rows


@pytest.mark.parametrize("stage,window,shift", [(1, 0, 0), (1, 2, 1), (2, 2, 1)])
@pytest.mark.parametrize("parallel", [True, False])
def test_training_loss_equals_cached_decoding_of_the_true_codes(
    stage: int, window: int, shift: int, parallel: bool
) -> None:
    torch.manual_seed(stage)
    lay = Layout(text_len=8, grid=4, stage=stage)
    model = CogVideoTransformer(ModelSpec(TransformerConfig(layers=3, hidden=32, heads=2), lay, 32, 50, window, shift))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # far from the init's near-uniform logits
    full, cached = layout_check(model.eval(), token_rows(3, lay, 32, 50), boi=2, parallel=parallel)
    assert full > 0.5 and abs(full - cached) <= 1e-4 * full  # a real loss (not 0 = 0), the same both ways


# ---------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def pair_home(tmp_path_factory, sample_dir) -> tuple[Path, dict[int, str]]:
    """A home whose lake holds the sample videos with their ground truth (the manifest's extra columns), split and
    encoded with both tokenizers (text v1, debug frame tokenizer v1), and a complete MLflow run of each stage with
    random weights of the debug config's sizes."""
    from cogflow.model.cogvideo.train import load_config
    from cogflow.model.tokenizers.encode import encode_clips, load_tokenizers
    from cogflow.model.tokenizers.train_frame import load_config as tokenizer_config
    from cogflow.model.tokenizers.train_frame import train_frame_tokenizer
    from cogflow.model.tokenizers.train_text import (
        TextTokenizerConfig,
        train_text_tokenizer,
    )
    from cogflow.pipeline.ingest import ingest
    from cogflow.pipeline.split import split

    root = tmp_path_factory.mktemp("diagnose")
    manifest = write_csv(root / "data" / "m.csv", copy_sample(sample_dir, root / "data"))  # every column: the truth too
    settings = lake_settings(root / "home")
    ingest(str(manifest), settings)
    split(settings)
    train_text_tokenizer(settings, TextTokenizerConfig(vocab_size=400))
    train_frame_tokenizer(settings, tokenizer_config("debug", ["train.steps=4"]), progress=False)  # any codes will do
    encode_clips(settings, progress=False)
    tokenizers = load_tokenizers(settings, device="cpu")
    run = load_config("debug")
    runs = {}
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    for stage in (1, 2):
        torch.manual_seed(stage)
        lay = Layout(text_len=64, grid=tokenizers.frames.config.grid(), stage=stage)
        spec = ModelSpec(
            run.model,
            lay,
            tokenizers.frames.config.codebook_size,
            tokenizers.text.vocab_size,
            run.stage_config(stage).window,
            run.stage_config(stage).shift,
        )
        path = transformers.save(
            CogVideoTransformer(spec),
            str(root / f"stage{stage}.pt"),
            {
                "stage": stage,
                "text_tokenizer_version": "1",
                "frame_tokenizer_version": "1",
                "run_config": {"generate": {"top_k": 0}},
            },
        )
        with tracking.run(f"stage{stage}", {"stage": stage}) as active:
            tracking.log_artifact(path, "model")
            tracking.set_tags({"cogflow.complete": "true"})
        runs[stage] = active.info.run_id
    return root / "home", runs


def test_diagnose_command_end_to_end(pair_home: tuple[Path, dict[int, str]], capsys) -> None:
    home, runs = pair_home
    args = [
        "--home",
        str(home),
        "diagnose",
        "--prompts",
        "4",
        "--clips",
        "3",
        "--variants",
        "default,guidance=1",
        "--val-rows",
        "4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for part in (
        "[1/6] caption following",
        "[6/6] layout check",
        "frame tokenizer ceiling",
        "copying the previous frame",
        "against retrieval",
        "pure-background tiles",
        "stage 2 relative difference: ok",
        "seconds: following",
        "following guidance=1",
    ):
        assert part in out, part
    assert "stage 1 relative difference: ok" in out and "MISMATCH" not in out

    folder = home / "diagnoses" / f"{runs[1][:8]}-{runs[2][:8]}"
    saved = json.loads((folder / "diagnosis.json").read_text())
    prompts = saved["prompts"]
    assert len(prompts) == 4 and all(p["truth"] for p in prompts) and sum(p["source"] == "val" for p in prompts) <= 2
    metrics = saved["metrics"]
    for key in (
        "following/default/keys/all/colour",
        "following/default/video/all/motion_lo",
        "following/guidance_1/keys/held_out/shape",
        "tokenizer/psnr",
        "tokenizer/background_codes",
        "neighbour/stage2/frame1/copy",
        "neighbour/stage1/model",
        "retrieval/all/colour",
        "bits/stage2/object",
        "bits/stage1/object_frame0",
        "bits/stage2/object_frame1",
        "bits/stage1/background_loss_share",
        "layout/stage2/cached",
    ):
        assert key in metrics, key
    assert "following/guidance_1/video/all/colour" not in metrics  # the sweep's other variants: key frames only
    assert metrics["following/default/keys/all/colour_lo"] <= metrics["following/default/keys/all/colour"]
    assert (folder / "diagnosis.md").read_text().count("\n") > 50 and (folder / "sheet.png").stat().st_size > 0

    settings = lake_settings(home)
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    run = MlflowClient().get_run(saved["mlflow_run"])
    assert run.data.tags["cogflow.kind"] == "diagnosis"
    assert (run.data.tags["cogflow.stage1_run"], run.data.tags["cogflow.stage2_run"]) == (runs[1], runs[2])
    assert run.data.metrics["layout/stage1/relative_difference"] <= 1e-4
    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"diagnosis.json", "diagnosis.md", "sheet.png"}


def test_unknown_parts_and_variants_are_usage_errors(capsys) -> None:
    assert main(["diagnose", "--parts", "layout,everything"]) == 2
    assert main(["diagnose", "--variants", "default,hot=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown parts everything" in err and "KEY one of temperature" in err
