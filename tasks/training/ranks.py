"""The trainer's ranks as the curriculum sees them: who owns what, and the two collectives it needs.

Rank 0 owns the curriculum store, the judge client (so the judge's rate and token limits hold for
the whole job, and the response cache has one writer), the step logs and the final save. Every
rank generates its share of a step's rollouts; `gather` brings them to every rank and `broadcast`
sends rank 0's judgments and rungs back. The process group is torch.distributed's, set up by
accelerate; the object collectives run on a gloo group of their own, because TRL calls async reward
functions on a thread of its own, where an NCCL object collective would use that thread's CUDA
device (cuda:0 on every rank) rather than the rank's.

One process (no process group) is the same code with `world == 1`: `gather` and `broadcast` return
their argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    _group: Any = field(default=None, repr=False)

    @classmethod
    def current(cls) -> Ranks:
        """This process's place in the job (torch.distributed must be initialised already when the
        job has several processes: accelerate does it when the trainer's arguments are built)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls()
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(dist.get_rank(), dist.get_world_size(), group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value, group=self._group)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (what other ranks pass is ignored)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self._group)
