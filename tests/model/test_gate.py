"""The champion gate (model/evaluation/evaluate.py::gate), criterion by criterion; the registry's side of a gate
(aliases, tags) runs in tests/flows/test_data_to_model.py."""

from __future__ import annotations

from cogflow.model.evaluation.caption_following import FIELDS, CaptionFollowing
from cogflow.model.evaluation.evaluate import Evaluation, gate


def evaluation(bits: dict[int, float], mean: float | None) -> Evaluation:
    following = (
        None
        if mean is None
        else CaptionFollowing(96, {f: mean for f in FIELDS}, {f: 0.2 for f in FIELDS}, mean, 0.2, mean**3, 0.008)
    )
    return Evaluation(bits, "val", {s: 8 for s in bits}, [], [], following, [], "", 1.0, 1.0)


def test_the_first_candidate_is_gated_on_caption_following_alone() -> None:
    passed = gate(evaluation({1: 0.5, 2: 0.4}, 0.6), None, 0.4)
    assert passed.promote and passed.reasons == [
        "no champion yet",
        "caption following 60.0% >= required 40.0% (chance 20.0%)",
    ]
    failed = gate(evaluation({1: 0.5, 2: 0.4}, 0.35), None, 0.4)
    assert not failed.promote and failed.tags()["cogflow.gate"] == "failed"
    assert "caption following 35.0% < required 40.0%" in failed.tags()["cogflow.gate.reasons"]


def test_no_stage_may_be_worse_than_the_champions_on_val_bits() -> None:
    champion = {1: 0.50, 2: 0.40}
    assert gate(evaluation({1: 0.49, 2: 0.40}, 0.6), champion, 0.4).promote
    worse = gate(evaluation({1: 0.49, 2: 0.42}, 0.9), champion, 0.4)
    assert not worse.promote and "stage 2 val bits 0.420 > champion's 0.400" in worse.reasons
    assert gate(evaluation({1: 0.49, 2: 0.42}, 0.9), champion, 0.4, tolerance=0.05).promote


def test_without_ground_truth_caption_following_does_not_gate() -> None:
    decision = gate(evaluation({1: 0.5}, None), {1: 0.6}, 1.0)
    assert decision.promote and "no ground truth for caption following: not gated on it" in decision.reasons
