"""Text to video with tiny random-weight stages and the real tokenizers of a split lake: cached decoding along
either schedule is the full pass, parallel and sequential decoding sample the same codes, and the command writes
a 33-frame video that PyAV reads back."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from helpers import lake_settings, tokenized_home
from PIL import Image

from cogflow.model import tracking
from cogflow.model.cogvideo import sampling
from cogflow.model.cogvideo import transformer as transformers
from cogflow.model.cogvideo.layout import (
    IGNORE,
    Layout,
    build_inputs,
    dense_mask,
    layer_shift,
    slots,
)
from cogflow.model.cogvideo.sampling import (
    GenerateConfig,
    attention_graph,
    filter_logits,
    generate_keyframes,
    guided,
    gumbel_noise,
    interpolate,
    parallel_schedule,
    sample_codes,
    schedule,
    sequential_schedule,
)
from cogflow.model.cogvideo.stages import find_stage
from cogflow.model.cogvideo.transformer import (
    CogVideoTransformer,
    KVCache,
    ModelSpec,
    TransformerConfig,
)
from cogflow.model.serving.generate import generate_video, main
from cogflow.model.tokenizers.encode import load_tokenizers
from cogflow.pipeline.video import probe

PROMPT = "一个下午在海滩上奔跑的女人"
TINY = TransformerConfig(layers=2, hidden=32, heads=2)
CODES, VOCAB = 64, 400  # the debug frame tokenizer's codebook; a text vocabulary (the fixture's supports ~300)
CASES = [(1, 0, 0), (1, 5, 2), (2, 0, 0), (2, 5, 2)]  # (stage, window, shift) on the 10x10 grid
PROBE_LIMITS = {"max_width": 4096, "max_height": 4096, "max_pixels": 4096 * 4096}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and threads spinning against other work are what a busy
    2-core machine punishes (a 1 s test once took 2 minutes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(
    stage: int,
    window: int = 0,
    shift: int = 0,
    codes: int = CODES,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    vocab: int = VOCAB,
) -> CogVideoTransformer:
    """Random weights, spread wider than the init's so that the logits are far from uniform (guidance, top-k and
    top-p then change what is drawn)."""
    torch.manual_seed(seed)
    model = CogVideoTransformer(ModelSpec(TINY, Layout(text_len=64, grid=10, stage=stage), codes, vocab, window, shift))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, sample_dir) -> Path:
    """A home whose lake is split and whose MLflow registry holds both tokenizers (version 1 of each)."""
    return tokenized_home(tmp_path_factory.mktemp("generate"), sample_dir, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tokenizers(tokenized: Path):
    tokenizers = load_tokenizers(lake_settings(tokenized), device="cpu")
    assert (tokenizers.frames.config.codebook_size, tokenizers.frames.config.grid()) == (CODES, 10)
    return tokenizers


def log_stage(
    settings,
    stage: int,
    model: CogVideoTransformer,
    folder: Path,
    complete: bool = True,
    versions: tuple[str, str] = ("1", "1"),
    generate: dict | None = None,
) -> str:
    """A finished training run as model/cogvideo/train.py leaves it: tags, and the stage file as artifact model/stageN.pt."""
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"stage{stage}.pt"
    extra = {
        "stage": stage,
        "text_tokenizer_version": versions[0],
        "frame_tokenizer_version": versions[1],
        "run_config": {"generate": generate or {}},
    }
    transformers.save(model, str(path), extra=extra)
    with tracking.run(f"stage{stage}", {"stage": stage}) as active:
        tracking.log_artifact(path, "model")
        if complete:
            tracking.set_tags({"cogflow.complete": "true"})
    return active.info.run_id


@pytest.fixture(scope="module")
def staged(tokenized: Path, tokenizers, tmp_path_factory) -> dict:
    """A copy of the tokenized home with a complete run of each stage (float32, as training saves them), and a
    newer stage-1 run that never completed, whose model no tokenizer fits (picking it would fail)."""
    home = Path(shutil.copytree(tokenized, tmp_path_factory.mktemp("staged") / "home"))
    settings = lake_settings(home)
    files, vocab = home.parent / "files", tokenizers.text.vocab_size
    runs = {
        1: log_stage(
            settings,
            1,
            tiny_model(1, dtype=torch.float32, vocab=vocab),
            files / "a",
            generate={"guidance": 3.0, "top_k": 0},
        ),
        2: log_stage(
            settings,
            2,
            tiny_model(2, 5, 2, dtype=torch.float32, vocab=vocab),
            files / "b",
            generate={"temperature": 1.0},
        ),
    }
    runs["unfinished"] = log_stage(
        settings, 1, tiny_model(1, codes=32, dtype=torch.float32, vocab=vocab), files / "c", complete=False
    )
    return {"home": home, "runs": runs, "vocab": vocab}


def prompt_ids(tokenizers, text: str = PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask, _ = tokenizers.text.encode_batch([text], 64)
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("stage,window,shift", CASES)
def test_cached_decoding_along_either_schedule_equals_one_full_pass(stage: int, window: int, shift: int) -> None:
    model = tiny_model(stage, window, shift)
    lay = model.spec.layout
    gen = torch.Generator().manual_seed(stage + window)
    text_ids = torch.randint(10, VOCAB, (2, 64), generator=gen)
    text_mask = torch.zeros(2, 64, dtype=torch.bool)
    text_mask[0, 40:], text_mask[1, 61:] = True, True  # different padding per row
    codes = torch.randint(0, CODES, (2, 5, 100), generator=gen)
    tokens, targets, text_valid = build_inputs(lay, text_ids, text_mask, torch.tensor([6, 7]), codes, CODES, 2)
    predicted = targets[0] != IGNORE
    with torch.inference_mode():
        full = model(tokens, text_valid)  # (B, S, C)
        for parallel in (False, True):
            cache = KVCache.empty(model.spec, 2, torch.device("cpu"), torch.float64)
            hidden = torch.full_like(full, torch.nan)
            for step in schedule(model.spec, parallel):
                hidden[:, step] = model(tokens[:, step], text_valid, step, cache)  # teacher-forced inputs
            torch.testing.assert_close(hidden, full, atol=1e-10, rtol=0)
            torch.testing.assert_close(
                model.logits(hidden[:, predicted]), model.logits(full[:, predicted]), atol=1e-10, rtol=0
            )


def replay(spec: ModelSpec, steps: list[torch.Tensor]) -> None:
    """Every slot computed exactly once; in each step, every slot attended to in any layer (the model's own
    per-layer masks) is computed before or in the step, and a predicted code's input (the code before it) was
    sampled in an earlier step."""
    lay = spec.layout
    s = slots(lay)
    masks = [dense_mask(lay, "spatial")] + [
        dense_mask(lay, "temporal", spec.window, layer_shift(i, spec.shift)) for i in range(spec.config.layers)
    ]
    order = torch.cat(steps)
    assert torch.equal(order.sort().values, torch.arange(lay.length))
    done = torch.zeros(lay.length, dtype=torch.bool)
    for step in steps:
        now = done.clone()
        now[step] = True
        for mask in masks:
            assert not (mask[step] & ~now).any()
        needs_code = step[(s.frame[step] >= 0) & ~s.given[step] & (s.index[step] > 0)]
        assert done[needs_code - 1].all()
        done = now


@pytest.mark.parametrize("stage,window,shift", CASES)
def test_parallel_schedule_is_a_valid_wavefront(stage: int, window: int, shift: int) -> None:
    spec = tiny_model(stage, window, shift, dtype=torch.float32).spec
    sequential, parallel = sequential_schedule(spec.layout), parallel_schedule(spec)
    replay(spec, sequential)
    replay(spec, parallel)
    lay = spec.layout
    predicted_frames = lay.frames - sum(lay.given_slots)
    assert len(sequential) == 1 + predicted_frames * lay.frame_len  # text (+ given frames), then one code per call
    if window == 0:
        # whole-frame temporal attention: no wavefront; the only calls saved are each frame's <boi> slot, which
        # joins the call before it (the prefill, or the previous frame's last code, which is never an input)
        assert len(parallel) == len(sequential) - predicted_frames
    else:
        assert len(parallel) < 0.75 * len(sequential)  # frames overlap
        assert max(len(step) for step in parallel[1:]) >= 2
    # the attention graph the schedule is built on holds every layer's mask
    graph = attention_graph(spec)
    assert graph[lay.length - 1].sum() > dense_mask(lay, "spatial")[lay.length - 1].sum()


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def test_a_code_depends_only_on_its_logits_and_key() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, CODES, generator=gen, dtype=torch.float64)
    rows, positions = torch.tensor([0, 1, 2]), torch.arange(100, 107)
    config = GenerateConfig(temperature=0.8, top_k=20, top_p=0.9)
    whole = sample_codes(logits, config, 5, 0, rows, positions)
    part = sample_codes(logits[1:, 2:4], config, 5, 0, rows[1:], positions[2:4])  # other rows, other slots in the call
    assert torch.equal(part, whole[1:, 2:4])
    assert not torch.equal(sample_codes(logits, config, 6, 0, rows, positions), whole)  # another seed
    assert not torch.equal(sample_codes(logits, config, 5, 1, rows, positions), whole)  # another stream (round)

    # with top-k, noise is drawn for the k candidates only: the very draw of noise over all codes
    full = (filter_logits(logits, config) + gumbel_noise(5, 0, rows, positions, CODES)).argmax(-1)
    assert torch.equal(whole, full)

    top5 = logits.topk(5, dim=-1).indices
    drawn = sample_codes(logits, GenerateConfig(top_k=5), 5, 0, rows, positions)
    assert (drawn[..., None] == top5).any(-1).all()
    assert torch.equal(sample_codes(logits, GenerateConfig(top_k=1), 9, 0, rows, positions), logits.argmax(-1))
    assert torch.equal(sample_codes(logits, GenerateConfig(top_p=1e-6), 9, 0, rows, positions), logits.argmax(-1))


def test_draws_follow_the_softmax_and_top_p_keeps_the_nucleus() -> None:
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64).expand(1, 40_000, 4)
    positions = torch.arange(40_000)
    counts = torch.bincount(sample_codes(logits, GenerateConfig(), 1, 0, torch.tensor([0]), positions)[0], minlength=4)
    assert torch.allclose(counts.double() / 40_000, logits[0, 0].softmax(-1), atol=0.01)
    # probabilities .032 .087 .237 .644: top-p 0.8 keeps the last two, renormalised
    nucleus = sample_codes(logits, GenerateConfig(top_p=0.8), 1, 0, torch.tensor([0]), positions)[0]
    counts = torch.bincount(nucleus, minlength=4).double() / 40_000
    assert counts[:2].sum() == 0 and abs(counts[3] - 0.644 / (0.644 + 0.237)) < 0.01


# ---------------------------------------------------------------------------------------------------------------
# Stages


def test_parallel_and_sequential_decoding_sample_the_same_video(tokenizers) -> None:
    vocab = tokenizers.text.vocab_size
    first, second = tiny_model(1, 5, 2, vocab=vocab), tiny_model(2, 5, 2, seed=1, vocab=vocab)
    ids, mask = prompt_ids(tokenizers)
    text = tokenizers.text
    config = GenerateConfig(temperature=0.9, top_k=40, top_p=0.95, guidance=3.0)

    def keyframes(seed: int, parallel: bool = True):
        return generate_keyframes(
            first,
            ids,
            mask,
            text.fps_id(1),
            text.boi_id,
            text.pad_id,
            dataclasses.replace(config, parallel=parallel),
            seed,
        )

    keys, one_by_one = keyframes(3), keyframes(3, parallel=False)
    assert keys.codes.shape == (1, 5, 100) and keys.tokens == 500
    assert (keys.steps, one_by_one.steps) == (len(parallel_schedule(first.spec)), 501) and keys.steps < 300
    assert torch.equal(keys.codes, one_by_one.codes)
    assert torch.equal(keyframes(3).codes, keys.codes)  # reproducible
    assert (keyframes(4).codes != keys.codes).float().mean() > 0.5  # another seed, another video

    video, rounds = interpolate(second, keys.codes, ids, mask, 1.0, text.boi_id, text.fps_id, config, seed=3)
    slow, _ = interpolate(
        second,
        keys.codes,
        ids,
        mask,
        1.0,
        text.boi_id,
        text.fps_id,
        dataclasses.replace(config, parallel=False),
        seed=3,
    )
    assert video.codes.shape == (1, 33, 100) and [r.codes.shape[1] for r in rounds] == [9, 17, 33]
    assert torch.equal(video.codes[:, ::8], keys.codes)  # the key frames stay where they were
    assert torch.equal(rounds[0].codes, video.codes[:, ::4])  # and so does every round's output
    assert torch.equal(video.codes, slow.codes) and video.steps < slow.steps == 3 * 201
    assert video.tokens == (2 + 4 + 8) * 2 * 100


def test_guidance_one_is_no_guidance(tokenizers) -> None:
    model = tiny_model(1, 5, 2, vocab=tokenizers.text.vocab_size)
    ids, mask = prompt_ids(tokenizers)
    text = tokenizers.text

    def keyframes(guidance: float) -> torch.Tensor:
        return generate_keyframes(
            model, ids, mask, text.fps_id(1), text.boi_id, text.pad_id, GenerateConfig(guidance=guidance), seed=7
        ).codes

    off = keyframes(1.0)  # one stream
    assert torch.equal(keyframes(1.0 + 1e-9), off)  # two streams, the caption-less one weighted out
    assert (keyframes(3.0) != off).any()
    cond, uncond = torch.randn(2, 1, 3, CODES, dtype=torch.float64)
    torch.testing.assert_close(guided(cond, uncond, 1.0), cond.log_softmax(-1), atol=1e-12, rtol=0)


def test_training_sample_sits_next_to_its_clip(tokenizers, tmp_path: Path) -> None:
    ids, mask = prompt_ids(tokenizers)
    truth = torch.randint(0, CODES, (5, 100), generator=torch.Generator().manual_seed(2)).numpy().astype("<i2")
    rows = {
        "text_ids": ids.tolist(),
        "text_mask": mask.tolist(),
        "fps_token_id": [tokenizers.text.fps_id(2)],
        "frame_codes": [truth.tobytes()],
    }
    for stage in (1, 2):
        model = tiny_model(
            stage, 5 * (stage - 1), 2 * (stage - 1), dtype=torch.float32, vocab=tokenizers.text.vocab_size
        )
        model.train()
        path = sampling.sample_for_training(
            model, model.spec.layout, tokenizers, rows, tmp_path / f"s{stage}.gif", GenerateConfig()
        )
        assert model.training  # put back as it was
        video = probe(path, **PROBE_LIMITS)
        assert (video.frame_count, video.width, video.height) == (5, 320, 160)


# ---------------------------------------------------------------------------------------------------------------
# End to end


def test_generate_video_with_the_newest_complete_stages(staged: dict, tmp_path: Path) -> None:
    settings = lake_settings(staged["home"])
    out, sheet = tmp_path / "beach.mp4", tmp_path / "sheet.png"
    result = generate_video(settings, PROMPT, out, seed=1, frames_out=sheet, progress=False)
    assert (result.frames, result.size, result.fps) == (33, 160, 8.0)
    assert (result.stage1_run, result.stage2_run) == (staged["runs"][1], staged["runs"][2])  # not the unfinished run
    assert result.stage1_steps == 501 - 5 and result.stage2_steps == 3 * len(
        parallel_schedule(tiny_model(2, 5, 2).spec)
    )
    assert result.tokens == 500 + 2800 and result.tokens_per_s > 0 and result.parallel
    video = probe(out, **PROBE_LIMITS)
    assert (video.codec, video.frame_count, video.width, video.height, video.fps) == ("h264", 33, 160, 160, 8.0)
    with Image.open(sheet) as image:
        assert image.width > 11 * 160 and image.height > 3 * 160
    # a prompt pasted with a carriage return still gets its sheet (the text shaper refuses control characters)
    generate_video(
        settings, PROMPT + "\r\n", tmp_path / "cr.gif", seed=1, frames_out=tmp_path / "cr.png", progress=False
    )
    assert (tmp_path / "cr.png").stat().st_size > 0

    big = generate_video(settings, PROMPT, tmp_path / "big.mp4", seed=1, upscale=480, progress=False)
    video = probe(big.path, **PROBE_LIMITS)
    assert (big.size, video.frame_count, video.width, video.height) == (480, 33, 480, 480)

    gif = generate_video(settings, PROMPT, tmp_path / "beach.gif", seed=2, progress=False)
    video = probe(gif.path, **PROBE_LIMITS)
    assert (video.codec, video.frame_count, video.width, video.height) == ("gif", 33, 160, 160)


def test_command_line(staged: dict, tokenized: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COGFLOW_HOME", str(staged["home"]))
    runs = staged["runs"]
    out = tmp_path / "cli.mp4"
    code = main(
        [
            PROMPT,
            "-o",
            str(out),
            "--stage1",
            runs[1],
            "--stage2",
            f"runs:/{runs[2]}",
            "--sequential",
            "--seed",
            "3",
            "--temperature",
            "0.9",
            "--top-k",
            "30",
            "--guidance",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 33 frames of 160x160 at 8 fps, seed 3" in printed
    assert "501 + 603 forward calls, one code per call decoding" in printed
    assert probe(out, **PROBE_LIMITS).frame_count == 33

    local = str(find_stage(lake_settings(staged["home"]), 1, None, tmp_path / "dl"))  # a local .pt file works too
    assert main([PROMPT, "-o", str(tmp_path / "local.gif"), "--stage1", local]) == 0
    capsys.readouterr()

    # stages whose tokens differ cannot be chained
    mixed = log_stage(
        lake_settings(staged["home"]),
        2,
        tiny_model(2, dtype=torch.float32, vocab=staged["vocab"]),
        tmp_path / "v2",
        versions=("2", "1"),
        complete=False,
    )
    assert main([PROMPT, "-o", str(tmp_path / "x.mp4"), "--stage2", mixed]) == 2
    assert "tokenizer versions" in capsys.readouterr().err
    for bad in (
        ["-o", str(tmp_path / "x.avi")],
        ["-o", str(tmp_path / "x.mp4"), "--stage1", "nonsense"],
        ["-o", str(tmp_path / "x.mp4"), "--top-p", "0"],
    ):
        assert main([PROMPT, *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1

    monkeypatch.setenv("COGFLOW_HOME", str(tokenized))  # tokenizers registered, no stage trained
    assert main([PROMPT, "-o", str(tmp_path / "none.mp4")]) == 2
    err = capsys.readouterr().err
    assert (
        "no complete stage-1 run" in err and "cogflow train --stage 1" in err and not (tmp_path / "none.mp4").exists()
    )
