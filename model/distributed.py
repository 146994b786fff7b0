"""Process-group setup for the training entry points, kept out of the models.

Under torchrun (WORLD_SIZE > 1) every process joins one group: NCCL on CUDA, gloo on the CPU. Run plainly,
there is no group and every helper here degrades to the single-process answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return Distributed(rank, world, local_rank, device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: CUDA that supports it, or a CPU with AVX-512 BF16 or AMX
    instructions, where a convolution in bf16 runs about twice as fast as in float32 (elsewhere the CPU emulates
    bf16 and it would be slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: absent, they answer no
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


_side: list = []


def side_group():
    """A second gloo group over the same ranks, made once (collective the first time), for work in a background
    thread (an asynchronous checkpoint): its collectives must not interleave with training's on the default group.
    None without a process group."""
    if not active():
        return None
    if not _side:
        _side.append(dist.new_group(backend="gloo"))
    return _side[0]


def teardown() -> None:
    _side.clear()
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def from_main(value: Any) -> Any:
    """Rank 0's `value`, on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (say, a SIGTERM that reached one rank before the others)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean(value: float, device: torch.device) -> float:
    """The mean of every rank's `value` (a loss over equal shares of one batch: the whole batch's)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def gather(value: Any) -> list:
    """Every rank's `value` (a picklable object), in rank order, on every rank."""
    if not active():
        return [value]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def ask_main(question: Callable[[], T], env: Distributed) -> T:
    """Rank 0 asks (MLflow, the registry: "is this training done already?"), every rank gets its answer, so that
    all of them take the same branch."""
    return from_main(question() if env.main else None)


def parallelize(model: nn.Module, env: Distributed, shard: Iterable[nn.Module] | None = None) -> nn.Module:
    """Data parallelism applied from outside the model, before its optimizer is made. With `shard` (FSDP2, several
    ranks), each of those blocks and then the whole model are sharded over the ranks, parameters in bf16 on CUDA,
    and the model itself is returned; otherwise, with several ranks, a DDP wrapper (which syncs the weights from
    rank 0 and averages gradients), else the model as it is. Returns the module to run forward and backward on;
    state dicts and the optimizer keep using `model`."""
    if env.world == 1:
        return model
    if shard is None:
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cuda = env.device.type == "cuda"
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else MixedPrecisionPolicy()
    )
    for block in shard:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
