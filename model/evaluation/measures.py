"""Measurements as rows of one table, each a share with its 95% Wilson interval next to chance or a baseline: what
`cogflow diagnose` reports and the benchmarks print."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from cogflow.model.evaluation.caption_following import FIELDS, Reading
from cogflow.model.evaluation.evaluate import (
    Prompt,
)
from cogflow.pipeline.sample_data import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
# What can be read back, per field; chance is 1 / len.
VALUES: dict[str, Collection[object]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "motion": MOTIONS,
    "background": BACKGROUNDS,
}
READ = (*FIELDS, "background")


# ---------------------------------------------------------------------------------------------------------------
# Measures and intervals


@dataclass(frozen=True)
class Measure:
    """One row of the table: a value, its 95% interval where it is a share of independent trials, and what to
    compare it with."""

    section: str  # the heading it is listed under
    name: str
    key: str  # the MLflow metric name
    value: float
    lo: float | None = None
    hi: float | None = None
    n: int | None = None  # prompts, clips, frames or codes it was measured on
    reference: float | None = None  # chance, a baseline, the number it must equal
    reference_name: str = ""
    unit: str = "share"  # share (shown in %), bits, nats, dB, count, ratio


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of the proportion successes / n (95% by default). Unlike p ± z·se it stays inside
    [0, 1] and is not empty at 0 or n successes, which matters for a few dozen prompts."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, not {successes} of {n}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 or n successes one bound is exactly 0 or 1 (rounding would leave 1e-17 or 1 - 1e-16)
    return 0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half


def proportion(
    section: str, name: str, key: str, successes: int, n: int, reference: float | None = None, reference_name: str = ""
) -> Measure:
    lo, hi = wilson(successes, n)
    return Measure(section, name, key, successes / n, lo, hi, n, reference, reference_name)


def slug(text: str) -> str:
    """A metric name's part: letters, digits, '.', '_' only."""
    return re.sub(r"[^0-9A-Za-z._]+", "_", text).strip("_")


def formatted(value: float, unit: str) -> str:
    return {
        "share": f"{value:.1%}",
        "bits": f"{value:.3f} bits",
        "nats": f"{value:.6f} nats",
        "dB": f"{value:.2f} dB",
        "count": f"{value:.2f}",
        "ratio": f"{value:.2e}",
    }[unit]


def reading_measures(
    section: str,
    key: str,
    label: str,
    prompts: Sequence[Prompt],
    readings: Sequence[Reading],
    references: Sequence[Reading] | None = None,
    reference_name: str = "chance",
) -> list[Measure]:
    """Per field of READ, for the val prompts, the held-out ones and all (those with truth): the share read back
    right, next to chance, or next to the share `references` (other readings of the same prompts) got right."""
    out = []
    for subset in ("val", "held-out", "all"):  # a prompt's source is "val" or "held-out"
        chosen = [i for i, p in enumerate(prompts) if p.truth is not None and subset in ("all", p.source)]
        if not chosen:
            continue
        shares = []
        truths = [prompts[i].truth or {} for i in range(len(prompts))]  # chosen prompts all have one
        for f in READ:
            right = sum(getattr(readings[i], f) == truths[i][f] for i in chosen)
            reference = 1 / len(VALUES[f])
            if references is not None:
                reference = sum(getattr(references[i], f) == truths[i][f] for i in chosen) / len(chosen)
            out.append(
                proportion(
                    section,
                    f"{label} {subset} {f}",
                    f"{key}/{slug(subset)}/{f}",
                    right,
                    len(chosen),
                    reference,
                    reference_name,
                )
            )
            shares.append((right / len(chosen), reference))
        # the gate's number: the mean over colour, shape and motion (not a proportion of trials: no interval)
        mean, mean_reference = np.mean(shares[: len(FIELDS)], axis=0)
        out.append(
            Measure(
                section,
                f"{label} {subset} mean of {'+'.join(FIELDS)}",
                f"{key}/{slug(subset)}/mean",
                float(mean),
                n=len(chosen),
                reference=float(mean_reference),
                reference_name=reference_name,
            )
        )
    return out
