"""The passes every target runs on the PyTorch model before its own lowering."""

from __future__ import annotations

from mcompress.core.pass_base import Pass


def torch_front_passes(recipe) -> list[Pass]:
    """The passes every target runs on the PyTorch model before export, as the recipe asks:
    structured pruning, distillation from the original, then vocabulary pruning."""
    passes: list[Pass] = []
    if recipe.prune is not None and recipe.prune.structural():
        from mcompress.passes.prune.structured import PruneStructured

        passes.append(PruneStructured())
    if recipe.distill is not None:
        from mcompress.passes.distill.kd import Distill

        passes.append(Distill())
    if recipe.prune is not None and recipe.prune.vocabulary is not None:
        # after distillation, which feeds teacher and student the same token ids
        from mcompress.passes.prune.vocabulary import PruneVocabulary

        passes.append(PruneVocabulary())
    return passes
