"""Data parallelism for the trainer, on Hugging Face ``accelerate``.

One code path for one process and for many: ``seedx-lab train`` alone runs in one process, and
``accelerate launch --num_processes N [--cpu] -m seedx_lab.cli train …`` runs the same loop in N processes
(gloo on CPUs, NCCL on GPUs), each taking its share of every global batch. The trainer builds each global
batch exactly as one process would (every example and random draw is a function of the config's seed, the
stage, the step and the row), keeps this process's rows (:meth:`Shard.rows`), and makes each loss a share of
the global loss (:meth:`Shard.mean`), so N processes follow one process's run to float rounding.

Why losses need care: a loss that is a mean over a ragged count (the LM's label tokens, the weighted
cross-entropies of stage a, the image blocks of a story batch) is not the mean of the processes' means. DDP
averages gradients over the N processes, so a process whose local mean is ``S_r / c_r`` contributes
``N * S_r / C`` with ``C = sum_r c_r``: the gradient of ``sum_r S_r / C``, the loss one process computes
on the whole batch.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Shard", "StageModule", "make_accelerator"]


def make_accelerator(device: torch.device):
    """An ``Accelerator`` for ``device``: on a CPU it is told so (``cpu=True``: gloo between processes); it
    never moves models itself (the trainer places them). DDP is asked to look for parameters a step did not
    use (stage c's output resampler is idle on text-only batches)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(cpu=device.type == "cpu", device_placement=False,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


class Shard:
    """This process's place among ``world`` data-parallel processes (rank ``rank``)."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    @property
    def main(self) -> bool:
        """Whether this process writes (logs, states, the checkpoint) and draws progress bars."""
        return self.rank == 0

    def rows(self, n: int, what: str = "batch") -> slice:
        """The rows of a global batch of ``n`` that this process trains on: a contiguous block of ``n / world``."""
        if n % self.world:
            raise ValueError(f"{what} ({n}) must be a multiple of the number of processes ({self.world}) "
                             "so that every process trains on an equal share")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def mean(self, local_mean: torch.Tensor, local_count) -> torch.Tensor:
        """This process's share of a global mean: ``local_mean`` (``S_r / c_r``, a scalar over ``local_count``
        items, weights or tokens) becomes ``world * S_r / C`` with ``C`` the count over all processes. In one
        process it is ``local_mean`` itself, unchanged. A process with no items contributes a constant 0."""
        if self.world == 1:
            return local_mean
        count = float(local_count)
        total = float(self.accelerator.reduce(torch.tensor(count, device=local_mean.device), "sum"))
        if count == 0 or total == 0:
            return local_mean.new_zeros(())
        return local_mean * (count * self.world / total)

    def average(self, value: float | torch.Tensor) -> float:
        """The mean over processes of a per-process number (a logged loss: the mean of the shares is the global
        loss); in one process the number itself. The reduction runs on the accelerator's device (NCCL reduces
        GPU tensors only)."""
        v = float(value)
        if self.world == 1:
            return v
        return float(self.accelerator.reduce(torch.tensor(v, device=self.accelerator.device), "mean"))


class StageModule(nn.Module):
    """The modules one stage trains, as one module whose ``forward(step)`` is that stage's training step, so
    that a data-parallel wrapper sees the step's forward pass and can average the gradients it leaves."""

    def __init__(self, modules: list[nn.Module], step_fn):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.step_fn = step_fn

    def forward(self, step: int):
        return self.step_fn(step)
