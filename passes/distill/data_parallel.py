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

Length-grouped order (``distill.length_grouped``, as Hugging Face Trainer's ``group_by_length``):
the same permutation and padding, then cut into megabatches of MEGABATCH global batches (N·b
examples each); each megabatch is sorted by character length (longest first, stable) and cut
into global batches, whose order inside the megabatch is shuffled with the same generator. The
ranks then take positions r, r + N, ... of that order as before, so the N ranks' batch k is still
exactly one process's batch k at N·b (for a training size that is a multiple of N·b; else the
padding is sorted into the last megabatch, whose batches then differ), and a batch holds texts of
similar length: on the
sentiment snippets (27 tokens on average) random batches of 32 pad to 52 tokens, grouped ones to
about the mean, which nearly halves the cost of a step.
"""

from __future__ import annotations

import math

MEGABATCH = 16  # global batches sorted by length together (a wider window pads less, mixes less)


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
    """This rank's training indices per epoch, from torch's DistributedSampler, or grouped by
    ``lengths`` in global batches of ``global_batch`` (see module docstring)."""

    def __init__(self, examples: int, world_size: int, rank: int, seed: int, lengths: list[int] | None = None,
                 global_batch: int | None = None):
        from torch.utils.data.distributed import DistributedSampler

        self.sampler = DistributedSampler(range(examples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        self.examples, self.world_size, self.rank, self.seed = examples, world_size, rank, seed
        self.lengths, self.global_batch = lengths, global_batch
        self.epoch, self.order = None, None

    def indices(self, epoch: int) -> list[int]:
        if epoch != self.epoch:
            if self.lengths is None:
                self.sampler.set_epoch(epoch)
                self.order = list(self.sampler)
            else:
                self.order = self._grouped(epoch)[self.rank::self.world_size]
            self.epoch = epoch
        return self.order

    def _grouped(self, epoch: int) -> list[int]:
        """Every rank's order of ``epoch``: DistributedSampler's permutation and padding, sorted by
        length within megabatches, the global batches of each megabatch shuffled."""
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)  # DistributedSampler's own seeding
        perm = torch.randperm(self.examples, generator=generator).tolist()
        total = math.ceil(self.examples / self.world_size) * self.world_size
        perm += (perm * math.ceil((total - len(perm)) / len(perm)))[:total - len(perm)] if total > len(perm) else []
        size, mega = self.global_batch, self.global_batch * MEGABATCH
        order = []
        for start in range(0, total, mega):
            chunk = sorted(perm[start:start + mega], key=lambda i: -self.lengths[i])
            batches = [chunk[k:k + size] for k in range(0, len(chunk), size)]
            for b in torch.randperm(len(batches), generator=generator).tolist():
                order += batches[b]
        return order
