"""The learning-rate schedule every training loop here uses (distillation, the examples' fine-tuning).

Linear warm-up then linear decay: at optimizer step s (0-based) the factor is (s + 1) / warmup while
s < warmup, then (total - s) / (total - warmup), down to 0. The first step already trains at
1/warmup of the peak rate. transformers' ``get_linear_schedule_with_warmup`` differs by one step
(its step 0 has rate 0 and its decay is shifted by one); using it would change the built
examples' checkpoints and every figure measured on them, so the schedule stays this one, once.
"""

from __future__ import annotations


def linear_warmup_decay_factor(step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def linear_warmup_decay(optimizer, warmup: int, total: int):
    """A torch LambdaLR with the factor above (torch is the caller's: imported here lazily)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_warmup_decay_factor(s, warmup, total))
