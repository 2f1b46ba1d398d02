"""Data parallelism for distillation: each rank's device, the DDP wrapper, and the data order.

Data order: every epoch is one seeded permutation of the training text (a DistributedSampler with
``shuffle``, the recipe seed and ``set_epoch(epoch)``: torch.randperm seeded seed + epoch), padded
by repeating its start to a multiple of the world size N, and rank r takes positions r, r + N,
r + 2N, ... Rank r's batch k (batch_size b) is then positions N·b·k + r + N·j for j < b, so the N
ranks' batches k together are exactly positions N·b·k ... N·b·(k+1) - 1 of the permutation: the
batch k one process at batch size N·b takes. DDP averages the ranks' gradients, and each rank's
loss is a mean over its b examples, so the averaged gradient is the mean over the N·b examples,
the one process's gradient, up to float rounding (summation order, batch padding).

That equality needs: the training size a multiple of N·b (else the sampler's padding repeats a few
examples in the last batch, and one process's last batch is smaller), dropout off (a rank draws
its own masks, seeded with seed + rank), and a loss that is a mean over examples (a tagger's
loss is a mean over words, so ranks with unequal word counts weight words slightly differently,
as in any DDP trainer).
"""

from __future__ import annotations


def rank_device(device):
    """``device`` with this rank's GPU index (engines/distributed sets the current device from
    LOCAL_RANK); the CPU unchanged."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def wrap(student, device):
    """``student`` in DistributedDataParallel (which copies rank 0's weights to every rank); the
    optimizer keeps working on ``student``'s own parameters, which DDP shares."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


class EpochOrder:
    """This rank's training indices per epoch, from torch's DistributedSampler (see module docstring)."""

    def __init__(self, examples: int, world_size: int, rank: int, seed: int):
        from torch.utils.data.distributed import DistributedSampler

        self.sampler = DistributedSampler(range(examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        self.epoch, self.order = None, None

    def indices(self, epoch: int) -> list[int]:
        if epoch != self.epoch:
            self.sampler.set_epoch(epoch)
            self.epoch, self.order = epoch, list(self.sampler)
        return self.order
