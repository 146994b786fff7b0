"""One optimizer step of model/cogvideo/train.py on a fixed batch, for the gradient test: run plainly on the whole batch,
or under `torchrun --nproc_per_node=2` where each rank takes its half (DDP, or FSDP with --fsdp). Writes the
gradient (rank 0) to the given file: with plain SGD at lr 1, the step is the (clipped) gradient.

    python tests/model/one_step.py OUT.pt [--fsdp]
"""

from __future__ import annotations

import sys

import torch

from cogflow.model import distributed
from cogflow.model.checkpoint import whole_model_state
from cogflow.model.cogvideo.layout import Layout, build_inputs
from cogflow.model.cogvideo.steps import optimizer_step
from cogflow.model.cogvideo.transformer import CogVideoTransformer, ModelSpec, TransformerConfig

K, V, B = 40, 30, 4


def main(out: str, fsdp: bool) -> None:
    env = distributed.setup()
    torch.manual_seed(0)
    lay = Layout(text_len=5, grid=4, stage=2)
    model = CogVideoTransformer(ModelSpec(TransformerConfig(layers=2, hidden=32, heads=2), lay, K, V, 2, 1))
    g = torch.Generator().manual_seed(1)
    ids, mask = torch.randint(10, V, (B, 5), generator=g), torch.rand(B, 5, generator=g) > 0.3
    codes = torch.randint(0, K, (B, 5, 16), generator=g)
    tokens, targets, valid = build_inputs(lay, ids, mask, torch.full((B,), 6), codes, K, 2)
    share = slice(env.rank * B // env.world, (env.rank + 1) * B // env.world)  # this rank's rows
    if env.world > 1 and fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        wrapped = fully_shard(model)
    elif env.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = model
    before = {
        k: v.detach().clone() for k, v in whole_model_state(model).items()
    }  # (the state shares storage with the model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = optimizer_step(
        wrapped,
        optimizer,
        [(tokens[share], targets[share], valid[share])],
        1.0,
        1.0,
        torch.autocast("cpu", enabled=False),
    )
    after = whole_model_state(model)
    if env.main:
        torch.save({"gradient": {k: before[k] - after[k] for k in before}, "loss": loss}, out)
    distributed.barrier()  # leave together: a rank tearing its group down while the other still works can abort
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1], "--fsdp" in sys.argv)
