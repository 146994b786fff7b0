"""Sharded checkpoints (model/checkpoint.py) in one process, in a folder and on S3 (moto): the newest complete
checkpoint is what loads, a save cut short is never trusted, an asynchronous save holds the state of the moment it
was asked for. Several ranks and resharding: tests/model/test_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cogflow.model.checkpoint import Checkpointer
from cogflow.pipeline.storage import Storage


def model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 6)).square().mean().backward()
    optimizer.step()  # moments exist: they must come back too
    return model, optimizer


def same(a: torch.nn.Module, oa: torch.optim.Optimizer, b: torch.nn.Module, ob: torch.optim.Optimizer) -> bool:
    weights = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    moments = all(
        torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
        for sa, sb in zip(oa.state_dict()["state"].values(), ob.state_dict()["state"].values(), strict=True)
    )
    return weights and moments


@pytest.mark.parametrize("where", ["folder", "s3"])
@pytest.mark.parametrize("background", [False, True], ids=["sync", "async"])
def test_the_newest_complete_checkpoint_loads(where: str, background: bool, tmp_path: Path, request) -> None:
    bucket = f"s3://{request.getfixturevalue('s3').bucket}" if where == "s3" else str(tmp_path)
    root = f"{bucket}/ckpt-{'async' if background else 'sync'}"
    store = Storage.at(root)
    saver = Checkpointer(store, "stage1/abc", async_save=background)
    model, optimizer = model_and_optimizer(0)
    assert saver.load(model, optimizer) is None  # nothing saved yet

    saver.save(2, model, optimizer, {"step": 2})
    kept = model_and_optimizer(0)  # the state at the second save, below
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    kept[0].load_state_dict(model.state_dict())
    saver.save(4, model, optimizer, {"step": 4, "run_id": "r"})
    with torch.no_grad():  # changed after the save was asked for: an asynchronous save must not see it
        for p in model.parameters():
            p.mul_(3.0)
    saver.wait()
    assert saver.latest() == "step-000000004"
    assert sorted({f.split("/")[2] for f in store.list_files("stage1/abc")}) == ["latest", "step-000000004"]

    fresh, fresh_optimizer = model_and_optimizer(1)
    assert Checkpointer(store, "stage1/abc").load(fresh, fresh_optimizer) == {"step": 4, "run_id": "r"}
    assert same(fresh, fresh_optimizer, kept[0], optimizer)


def test_a_save_cut_short_is_not_trusted(tmp_path: Path) -> None:
    store = Storage.at(tmp_path)
    saver = Checkpointer(store, "t")
    model, optimizer = model_and_optimizer(0)
    saver.save(4, model, optimizer, {"step": 4})
    # what a crash half-way through the save of step 6 leaves: shards, no index, `latest` not moved
    store.put_bytes("t/step-000000006/__0_0.distcp", b"half")
    fresh, fresh_optimizer = model_and_optimizer(1)
    assert saver.load(fresh, fresh_optimizer) == {"step": 4}
    assert same(fresh, fresh_optimizer, model, optimizer)
    saver.save(6, model, optimizer, {"step": 6})  # the same step saved again replaces the remains
    assert saver.load(fresh, fresh_optimizer) == {"step": 6}
    assert sorted(store.list_files("t")) == [
        "t/latest",
        "t/step-000000006/.metadata",
        "t/step-000000006/__0_0.distcp",
        "t/step-000000006/state.pt",
    ]
