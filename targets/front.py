"""The passes every target runs on the PyTorch model before its own lowering."""

from __future__ import annotations

from mcompress.core.pass_base import Pass


def torch_front_passes(recipe) -> list[Pass]:
    """The passes every target runs on the PyTorch model before export, as the recipe asks:
    structured pruning, then distillation from the original."""
    passes: list[Pass] = []
    if recipe.prune is not None:
        from mcompress.passes.prune.structured import PruneStructured

        passes.append(PruneStructured())
    if recipe.distill is not None:
        from mcompress.passes.distill.kd import Distill

        passes.append(Distill())
    return passes
