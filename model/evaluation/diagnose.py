"""Why a trained pair of stages does or does not follow its captions: `cogflow diagnose`, rerunnable measurements.

Each part is a plain function that can be called alone (from an experiment script, say) and returns `Measure`s,
rows of one table:
1. `caption_following`: a video for each of N prompts (half val captions of the lake, half sample-world captions no
   video of it has), read back (model/evaluation/caption_following.py) per field against the truth, with 95% Wilson intervals
   next to chance, on stage 1's 5 key frames and on the whole 33-frame video: which stage loses what.
2. The same for several sampling variants (`variants`; key frames only unless asked): is it the sampling?
3. `tokenizer_ceiling`: real clips read back before and after a round trip through the frame tokenizer, its PSNR,
   and how stable a plain background's codes are: what the transformer could show at best.
4. `neighbour_baseline`: each stage's teacher-forced argmax accuracy against copying the code at the same position
   of the previous frame.
5. `retrieval_baseline`: the nearest training clip by caption, read back against the prompt's truth: does stage 1
   beat looking up the most similar training caption?
6. `background_bits`: val bits per token of codes on pure-background tiles and of the rest.
7. `layout_check`: the training loss equals the cross entropy of cached decoding (generate's schedule) fed the true
   codes: training and generation see one layout, the same positions and masks.

`diagnose` runs them on a loaded pair; `run_diagnosis` loads the pair, runs them, writes diagnosis.json,
diagnosis.md and sheet.png under $COGFLOW_HOME/diagnoses/<stage1 run>-<stage2 run>/ and logs an MLflow run
(`cogflow.kind=diagnosis`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cogflow.model import media
from cogflow.model.cogvideo import stages
from cogflow.model.cogvideo.sampling import GenerateConfig
from cogflow.model.cogvideo.stages import Stage
from cogflow.model.evaluation.baselines import (
    CodePredictions,
    background_bits,
    code_backgrounds,
    layout_check,
    layout_measures,
    neighbour_baseline,
    retrieval_baseline,
    teacher_forced,
    tokenizer_ceiling,
)
from cogflow.model.evaluation.caption_following import Reading, read_video
from cogflow.model.evaluation.evaluate import (
    Prompt,
    batch_seed,
    eval_prompts,
    evaluation_sheet,
    val_rows,
)
from cogflow.model.evaluation.measures import Measure, formatted, reading_measures, slug
from cogflow.model.serving.text_to_video import TextToVideo
from cogflow.pipeline.contract import INTERPOLATION_ROUNDS, naming_hash
from cogflow.pipeline.settings import Settings

DEFAULT_VARIANTS = ("default", "guidance=3", "temperature=0.3")  # the demo samples without guidance
PARTS = ("following", "tokenizer", "neighbour", "retrieval", "bits", "layout")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# 1-2. Caption following, for several sampling variants


@dataclass(frozen=True)
class Variant:
    """A way to sample: `options` override the stages' [generate] tables (GenerateConfig fields)."""

    name: str  # as written: "default", "guidance=1", "temperature=0.3+top_k=0"
    options: dict[str, object]


def parse_variant(text: str) -> Variant:
    """'default' (the stages' own tables) or KEY=VALUE[+KEY=VALUE...] over GenerateConfig's sampling fields."""
    text = text.strip()
    if text == "default":
        return Variant(text, {})
    types = {f.name: f.type for f in fields(GenerateConfig) if f.name != "parallel"}
    options: dict[str, Any] = {}
    for item in text.split("+"):
        name, sep, value = item.partition("=")
        if not sep or name not in types:
            raise ValueError(
                f"a sampling variant is 'default' or KEY=VALUE[+KEY=VALUE] with KEY one of "
                f"{', '.join(types)}; not {text!r}"
            )
        options[name] = int(value) if types[name] in ("int", int) else float(value)
    GenerateConfig(**options)  # out-of-range values fail here, before any video is made
    return Variant(text, options)


def describe(config: GenerateConfig) -> str:
    return (
        f"temperature {config.temperature:g}, top-k {config.top_k or 'off'}, top-p {config.top_p:g}, "
        f"guidance {config.guidance:g}"
    )


def diagnosis_prompts(settings: Settings, count: int, seed: int = 0) -> list[Prompt]:
    """`count` prompts: up to half of them val captions of the lake (with their truth where the lake has it), the
    rest sample-world captions no video of the lake has (sample data only)."""
    return eval_prompts(settings, count, seed, max_val=count // 2)


@dataclass
class Following:
    """What parts 1-2 made: for each (variant, "key frames" | "video"), one reading per prompt."""

    prompts: list[Prompt]
    readings: dict[tuple[str, str], list[Reading]]
    measures: list[Measure]
    sheet: list[np.ndarray]  # per prompt, the first variant's video, every 4th frame (its 5 key frames when only those)
    sheet_readings: list[Reading]
    seconds: dict[str, float]  # per variant


def caption_following(
    t2v: TextToVideo,
    prompts: Sequence[Prompt],
    variants: Sequence[Variant] = tuple(map(parse_variant, DEFAULT_VARIANTS)),
    *,
    seed: int = 0,
    batch: int = 8,
    full: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Following:
    """Videos for `prompts` with each sampling variant, in batches with evaluate_pair's seeds (the default variant
    makes the evaluation's videos), read back on stage 1's key frames and, for the variants named in `full`
    (default: the first), on the whole 33-frame video after stage 2."""
    full = [variants[0].name] if full is None else list(full)
    first, tokenizers = t2v.first, t2v.tokenizers
    readings: dict[tuple[str, str], list[Reading]] = {}
    sheet: list[np.ndarray] = []
    sheet_readings: list[Reading] = []
    measures: list[Measure] = []
    seconds: dict[str, float] = {}
    for v, variant in enumerate(variants):
        started = time.monotonic()
        whole = variant.name in full
        keys, videos = [], []
        for b, start in enumerate(range(0, len(prompts), batch)):
            captions, batch_seeded = [p.caption for p in prompts[start : start + batch]], batch_seed(seed, b)
            if whole:  # its key frames are stage 1's, exactly: stage 2 keeps every given frame
                codes = t2v.codes(captions, variant.options, batch_seeded).codes
            else:
                codes = t2v.keyframes(captions, variant.options, batch_seeded)[0].codes
            pixels = media.to_pixels(tokenizers, codes)  # (B, 33 or 5, 160, 160, 3)
            for frames in pixels:
                keys.append(read_video(frames[:: 2**INTERPOLATION_ROUNDS] if whole else frames))
                if whole:
                    videos.append(read_video(frames))
                if v == 0:
                    sheet.append(frames[::4] if whole else frames)
                    sheet_readings.append(videos[-1] if whole else keys[-1])
            log(
                f"  {variant.name}: {len(keys)}/{len(prompts)} {'videos' if whole else 'key frames'} "
                f"({time.monotonic() - started:.0f} s)"
            )
        seconds[variant.name] = time.monotonic() - started
        config = stages.sampling_config(first, variant.options)
        section = f"caption following, sampling {variant.name} ({describe(config)})"
        key = f"following/{slug(variant.name)}"
        readings[variant.name, "key frames"] = keys
        measures += reading_measures(section, f"{key}/keys", "key frames", prompts, keys)
        if whole:
            readings[variant.name, "video"] = videos
            measures += reading_measures(section, f"{key}/video", "video", prompts, videos)
    return Following(list(prompts), readings, measures, sheet, sheet_readings, seconds)


# ---------------------------------------------------------------------------------------------------------------
# The whole diagnosis


@dataclass(frozen=True)
class DiagnoseConfig:
    prompts: int = 96  # half val captions, half unseen sample-world captions
    clips: int = 48  # real stage-1 clips for the tokenizer ceiling
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # sampling variants (parse_variant); the first is the reference
    full_sweep: bool = False  # every variant to 33-frame videos (default: the first only, key frames for the rest)
    seed: int = 0
    batch: int = 8  # prompts generated at once
    val_rows: int = 64  # token rows of each stage for the teacher-forced parts (4, 6)
    layout_rows: int = 4  # token rows of each stage for the layout check (7)
    parts: tuple[str, ...] = PARTS  # which parts to run

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {', '.join(sorted(unknown))}: choose among {', '.join(PARTS)}")
        if not self.variants:
            raise ValueError("give at least one sampling variant (e.g. default)")
        for text in self.variants:
            parse_variant(text)


@dataclass
class Diagnosis:
    stage_runs: tuple[str, str]  # the stages' run ids (or the references they were loaded from)
    tokenizer_versions: tuple[str, str]  # text, frames
    config: DiagnoseConfig
    measures: list[Measure]
    seconds: dict[str, float]  # per part
    prompts: list[Prompt] = field(default_factory=list)
    out_dir: str | None = None
    mlflow_run: str | None = None

    def lines(self) -> list[str]:
        """The table: one row per measure (value, 95% interval, n, what to compare with), under its section."""
        c = self.config
        sources = {s: sum(p.source == s for p in self.prompts) for s in ("val", "held-out")}
        out = [
            f"diagnosis of stage 1 {self.stage_runs[0]} and stage 2 {self.stage_runs[1]} (text tokenizer "
            f"v{self.tokenizer_versions[0]}, frame tokenizer v{self.tokenizer_versions[1]}), seed {c.seed}",
            f"{len(self.prompts)} prompts ({sources['val']} val, {sources['held-out']} held-out), {c.clips} clips, "
            f"{c.val_rows} val rows per stage, variants {', '.join(c.variants)}",
        ]
        width = max((len(m.name) for m in self.measures), default=0)
        section = None
        for m in self.measures:
            if m.section != section:
                section = m.section
                out += ["", section]
            interval = (
                f"[{formatted(m.lo, m.unit)}, {formatted(m.hi, m.unit)}]"
                if m.lo is not None and m.hi is not None
                else ""
            )
            n = f"n={m.n}" if m.n is not None else ""
            reference = (
                f"{m.reference_name} {formatted(m.reference, m.unit)}".strip() if m.reference is not None else ""
            )
            value = formatted(m.value, m.unit)
            out.append(f"  {m.name:<{width}}  {value:>14}  {interval:<16}  {n:<8}  {reference}".rstrip())
        out += ["", "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in self.seconds.items())]
        if self.out_dir:
            out.append(f"written to {self.out_dir}" + (f"; MLflow run {self.mlflow_run}" if self.mlflow_run else ""))
        return out

    def text(self) -> str:
        return "\n".join(self.lines())

    def metrics(self) -> dict[str, float]:
        """Flat floats for MLflow: each measure's key, and key_lo / key_hi for its interval; seconds per part."""
        out: dict[str, float] = {}
        for m in self.measures:
            out[m.key] = m.value
            if m.lo is not None and m.hi is not None:
                out[f"{m.key}_lo"], out[f"{m.key}_hi"] = m.lo, m.hi
        out.update({f"seconds/{slug(k)}": v for k, v in self.seconds.items()})
        return out


def diagnose(
    settings: Settings,
    t2v: TextToVideo,
    config: DiagnoseConfig = DiagnoseConfig(),
    log: Callable[[str], None] = lambda line: None,
) -> tuple[Diagnosis, Following | None]:
    """Run the parts of `config` on a loaded pair, saying what each does and how long it took; the diagnosis, and
    what caption following made (its videos, for the sheet)."""
    first, second, tokenizers = t2v.first, t2v.second, t2v.tokenizers
    measures: list[Measure] = []
    seconds: dict[str, float] = {}
    variants = [parse_variant(v) for v in config.variants]
    wanted = [p for p in PARTS if p in config.parts]

    def timed(name: str, what: str, run: Callable[[], T]) -> T:
        log(f"[{wanted.index(name) + 1}/{len(wanted)}] {what}")
        started = time.monotonic()
        result = run()
        seconds[name] = time.monotonic() - started
        log(f"    {name}: {seconds[name]:.1f} s")
        return result

    predictions: dict[int, CodePredictions] = {}

    def predicted(stage: Stage) -> CodePredictions:
        """Parts 4 and 6 share one teacher-forced pass over the val rows per stage."""
        s = stage.model.spec.layout.stage
        if s not in predictions:
            rows, _ = val_rows(settings, stage, config.val_rows)
            predictions[s] = teacher_forced(stage.model, rows, tokenizers.text.boi_id)
        return predictions[s]

    def layout(stage: Stage) -> list[Measure]:
        rows = val_rows(settings, stage, config.layout_rows)[0]
        return layout_measures(stage.model.spec.layout.stage, *layout_check(stage.model, rows, tokenizers.text.boi_id))

    prompts = (
        diagnosis_prompts(settings, config.prompts, config.seed) if {"following", "retrieval"} & set(wanted) else []
    )
    following = None
    if "following" in wanted:
        full = [v.name for v in variants] if config.full_sweep else None
        following = timed(
            "following",
            f"caption following: {len(prompts)} prompts, sampling {', '.join(config.variants)}",
            lambda: caption_following(t2v, prompts, variants, seed=config.seed, batch=config.batch, full=full, log=log),
        )
        measures += following.measures
        seconds.update({f"following {name}": spent for name, spent in following.seconds.items()})
    if "tokenizer" in wanted:
        measures += timed(
            "tokenizer",
            f"frame tokenizer ceiling on {config.clips} real clips",
            lambda: tokenizer_ceiling(settings, tokenizers, config.clips),
        )
    if "neighbour" in wanted:
        measures += timed(
            "neighbour",
            f"teacher-forced accuracy against copying the previous frame ({config.val_rows} val rows per stage)",
            lambda: [m for stage in (first, second) for m in neighbour_baseline(predicted(stage))],
        )
    if "retrieval" in wanted:
        keys = None if following is None else following.readings[variants[0].name, "key frames"]
        measures += timed(
            "retrieval",
            "stage 1 against retrieving the nearest training caption",
            lambda: retrieval_baseline(settings, tokenizers, prompts, keys),
        )
    if "bits" in wanted:
        measures += timed(
            "bits",
            "val bits per token on background and object codes",
            lambda: [
                m
                for stage in (first, second)
                for m in background_bits(predicted(stage), code_backgrounds(settings, predicted(stage), tokenizers))
            ],
        )
    if "layout" in wanted:
        measures += timed(
            "layout", f"layout check on {config.layout_rows} val rows per stage", lambda: layout(first) + layout(second)
        )
    diagnosis = Diagnosis(
        (first.source, second.source),
        (tokenizers.text_version, tokenizers.frame_version),
        config,
        measures,
        seconds,
        prompts,
    )
    return diagnosis, following


def _short(source: str) -> str:
    """A stage's name in a folder: its run id's first 8 digits, else a hash of the reference it came from."""
    return source[:8] if stages.RUN_ID.match(source) else naming_hash(source)[:8]


def save(diagnosis: Diagnosis, following: Following | None, out_dir: Path) -> list[Path]:
    """diagnosis.json, diagnosis.md (the table) and, when videos were made, sheet.png in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    diagnosis.out_dir = str(out_dir)
    files = [out_dir / "diagnosis.json", out_dir / "diagnosis.md"]
    files[0].write_text(json.dumps({**asdict(diagnosis), "metrics": diagnosis.metrics()}, ensure_ascii=False, indent=1))
    files[1].write_text("# cogflow diagnose\n\n```\n" + diagnosis.text() + "\n```\n")
    if following is not None and following.sheet:
        files.append(out_dir / "sheet.png")
        evaluation_sheet(following.sheet, following.prompts, following.sheet_readings).save(files[-1])
    return files


def run_diagnosis(
    settings: Settings,
    stage1: str | None = None,
    stage2: str | None = None,
    config: DiagnoseConfig = DiagnoseConfig(),
    device: str | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> Diagnosis:
    """Load a trained pair (references as for `cogflow generate`; default: the newest complete run of each stage),
    diagnose it, write the files under $COGFLOW_HOME/diagnoses/<stage1 run>-<stage2 run>/ and log an MLflow run
    tagged cogflow.kind=diagnosis with the stages' runs, the metrics and the files."""
    from cogflow.model import tracking

    started = time.monotonic()
    t2v = TextToVideo.from_runs(settings, stage1, stage2, device)
    first, second, tokenizers = t2v.first, t2v.second, t2v.tokenizers
    log(
        f"stages {first.source} (1) and {second.source} (2) on {t2v.device}, loaded in {time.monotonic() - started:.1f} s"
    )
    diagnosis, following = diagnose(settings, t2v, config, log)
    out_dir = Path(settings.home).absolute() / "diagnoses" / f"{_short(first.source)}-{_short(second.source)}"
    tracking.use(settings.mlflow_tracking_uri, settings.home)
    tags = {
        "cogflow.stage1_run": first.source,
        "cogflow.stage2_run": second.source,
        "cogflow.text_tokenizer_version": tokenizers.text_version,
        "cogflow.frame_tokenizer_version": tokenizers.frame_version,
    }
    with tracking.run("diagnosis", {"diagnosis": asdict(config)}, tags) as active:
        diagnosis.mlflow_run = active.info.run_id
        files = save(diagnosis, following, out_dir)
        tracking.log_metrics(diagnosis.metrics())
        for path in files:
            tracking.log_artifact(path)
    return diagnosis
