"""Prune: remove whole attention heads and FFN intermediate neurons, ranked by data.

Importance is measured on the calibration text (``prune.importance_examples`` examples, batched),
not read off weight magnitudes:

- head h of layer l: E_x |∂L/∂m_lh|, where m_lh is a mask (all ones) multiplying that head's slice
  of the attention context, i.e. the input of the attention output projection (Michel et al. 2019,
  "Are Sixteen Heads Really Better than One?"). Masking the context is the same function as
  masking the head's attention probabilities, and works with every attention implementation.
- FFN neuron j of layer l: E_x |Σ_tokens a_j · ∂L/∂a_j| over the intermediate activations a (the
  input of the FFN output projection): a first-order Taylor estimate of the loss change when the
  neuron is removed (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").

L is the cross-entropy against the labels when the calibration data has them, else against the
unpruned model's own argmax; for a tagger it is summed over the words of a sentence, each scored
at its first sub-token (calibration/tagged.py), so one example is one sentence. Masks have a batch dimension, so one backward pass gives per-example
gradients, and their absolute values are summed over examples.

- layer l (only with ``keep_layers``), by ``layer_importance``. ``ablation``: the mean loss on the scoring data when layer l is skipped
  (its input passed on unchanged), measured by ablation. Layers are dropped greedily: the layer
  whose removal raises the loss least goes first, then the rest are measured again without it,
  until ``keep_layers`` remain. ``block_influence`` (deep decoders, where ablation costs a forward
  pass per candidate per round): BI_l = 1 - E_tokens cos(x_l, y_l), x_l and y_l the hidden states
  entering and leaving layer l, from one forward pass; the ``keep_layers`` layers of highest BI
  stay (Men et al. 2024, "ShortGPT"). Layers are dropped before heads and neurons are scored, so
  those scores describe the network that is kept.

Families (``LAYOUTS``): BERT, RoBERTa and DistilBERT encoders (layers, heads, FFN neurons, 2:4);
LLaMA and GPT-2 decoders (layers and FFN neurons: LLaMA's gated FFN loses a neuron's row of
gate_proj and up_proj and its column of down_proj; GPT-2's Conv1D projections are sliced along
their (in, out) weights). A decoder's kept layers are renumbered 0..n-1 (their attention's
``layer_idx`` picks the KV cache slot), as ``from_pretrained`` numbers the smaller model, and
scoring runs without a KV cache.

Budget (recipe ``prune``): ``keep_layers`` keeps that many encoder layers; ``heads_per_layer`` keeps the k best heads in every layer and
``ffn_neurons_per_layer`` the n best neurons in every layer; or ``keep_ratio`` r keeps
round(r × all heads) heads ranked globally (scores normalised by their L2 norm within each layer,
as Michel et al. do; every layer keeps at least one head) and round(r × FFN size) neurons per layer.

How the smaller model is stored: heads are removed with Hugging Face's ``prune_heads``, which
slices the Q/K/V and output projections and records the removed head ids of every layer in
``config.pruned_heads`` (original ids, so the number of heads may differ from layer to layer);
``from_pretrained`` builds the full model, prunes those heads, then loads the smaller weights.
The FFN is sliced by hand (intermediate rows and output columns) and ``config.intermediate_size``
(DistilBERT: ``hidden_dim``) set to the new width; that key holds one number, which is why every
layer keeps the same number of neurons. Dropped layers leave the ``ModuleList``; the config's
layer count (``num_hidden_layers``, DistilBERT ``n_layers``) is set to the number kept,
``config.pruned_heads`` is re-indexed to the new layer positions, and the kept layers' original
indices are recorded in the state's annotations (``kept_layers``) so distillation can match each
student layer with the teacher layer it came from. A saved pruned model therefore reloads with plain
``from_pretrained`` and exports to ONNX like any other.

Optional ``semi_structured_2_4``: after the structured pruning, in every encoder Linear weight
each group of 4 consecutive input weights keeps its 2 largest magnitudes (a 2:4 pattern for
sparse tensor cores, e.g. TensorRT on Ampere and later). Nothing on the CPU target runs faster
from it; the state is annotated ``sparsity: "2:4"`` and the distillation pass keeps the pattern.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from mcompress.metrics.flops import encoder_flops, parameter_count
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)

FLOPS_SEQUENCE_LENGTH = 128


@dataclass(frozen=True)
class BlockLayout:
    """Where one transformer family keeps the pieces pruning touches: ``layers`` from the base
    model, the rest from within one layer."""

    layers: str  # the ModuleList of transformer layers
    ffn_in: tuple[str, ...]  # projections hidden -> intermediate: their outputs are the FFN neurons
    ffn_out: str  # projection intermediate -> hidden
    ffn_config_key: str  # config key for the intermediate width
    layers_config_key: str  # config key for the number of layers
    attention_output: str | None = None  # Linear whose input is the concatenated head contexts; None: heads stay
    num_heads: str | None = None  # attribute holding the layer's current number of heads
    head_size: str | None = None
    heads_config_key: str | None = None
    layer_index: str | None = None  # attribute a decoder's attention indexes its KV cache with
    conv1d: bool = False  # projections are transformers' Conv1D (GPT-2): weight (in, out)

    @property
    def prunes_heads(self) -> bool:
        return self.attention_output is not None


_BERT = BlockLayout("encoder.layer", ("intermediate.dense",), "output.dense", "intermediate_size", "num_hidden_layers",
                    "attention.output.dense", "attention.self.num_attention_heads",
                    "attention.self.attention_head_size", "num_attention_heads")
LAYOUTS = {
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": BlockLayout("transformer.layer", ("ffn.lin1",), "ffn.lin2", "hidden_dim", "n_layers",
                              "attention.out_lin", "attention.n_heads", "attention.attention_head_size", "n_heads"),
    # Decoders: whole layers and FFN neurons; attention heads stay (grouped KV heads are shared by
    # several query heads, and the KV cache's shape follows them).
    "llama": BlockLayout("layers", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size",
                         "num_hidden_layers", layer_index="self_attn.layer_idx"),
    "gpt2": BlockLayout("h", ("mlp.c_fc",), "mlp.c_proj", "n_inner", "n_layer", layer_index="attn.layer_idx",
                        conv1d=True),
}


def layout_of(model) -> BlockLayout:
    try:
        return LAYOUTS[model.config.model_type]
    except KeyError:
        raise ValueError(f"structured pruning supports {sorted(LAYOUTS)}, not {model.config.model_type!r}") from None


def encoder_layers(model) -> list:
    return list(model.base_model.get_submodule(layout_of(model).layers))


def heads_per_layer(model) -> list[int]:
    """Each layer's current number of attention heads (a decoder's: the config's, never pruned)."""
    layout = layout_of(model)
    if not layout.prunes_heads:
        return [int(model.config.num_attention_heads)] * len(encoder_layers(model))
    get = attrgetter(layout.num_heads)
    return [int(get(layer)) for layer in encoder_layers(model)]


def ffn_sizes(model) -> list[int]:
    layout = layout_of(model)
    projections = [layer.get_submodule(layout.ffn_in[0]) for layer in encoder_layers(model)]
    return [p.nf if layout.conv1d else p.out_features for p in projections]  # Conv1D: nf output features


def original_head_ids(model, layer: int) -> list[int]:
    """Current head index -> original head id (``prune_heads`` takes original ids)."""
    total = getattr(model.config, layout_of(model).heads_config_key)
    pruned = set((model.config.pruned_heads or {}).get(layer, []))
    return [h for h in range(total) if h not in pruned]


def _head_mask_hook(masks: dict, index: int, heads: int, head_size: int):
    """Forward pre-hook for layer ``index``'s attention output projection: multiplies each head's
    slice of the context by its entry of a fresh all-ones mask [batch, 1, heads], kept in ``masks``."""
    import torch

    def hook(module, args):
        x = args[0]
        mask = torch.ones(x.shape[0], 1, heads, requires_grad=True)
        masks[("head", index)] = mask
        return (x * mask.repeat_interleave(head_size, dim=-1),) + tuple(args[1:])
    return hook


def _neuron_mask_hook(masks: dict, index: int):
    """Forward pre-hook for layer ``index``'s FFN output projection: multiplies the intermediate
    activations by a fresh all-ones mask [batch, 1, neurons], kept in ``masks``."""
    import torch

    def hook(module, args):
        x = args[0]
        mask = torch.ones(x.shape[0], 1, x.shape[-1], requires_grad=True)
        masks[("ffn", index)] = mask
        return (x * mask,) + tuple(args[1:])
    return hook


@contextmanager
def _scoring_mode(model, hooks: list):
    """Eval mode, parameters frozen (only the masks' gradients are needed) and the ``(module,
    hook)`` forward pre-hooks registered; all restored on exit."""
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    handles = []
    try:
        model.eval()  # no dropout: scores of the deployed function
        for p in model.parameters():
            p.requires_grad_(False)
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)


def _backward_scored_loss(model, batch: dict, labels, task) -> None:
    """Back-propagate the summed cross-entropy of one batch (against ``labels``, or the model's own
    argmax where they are None or open) through the masks."""
    import torch

    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    logits = model(**feed).logits
    target = task.resolve_targets(None if labels is None else torch.from_numpy(labels), logits.detach())
    logits, target = task.scored_rows(logits, target)
    # Summed, not averaged: each example's mask gradient is its own dL/dm.
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    loss.backward()


def importance_scores(model, batches, labels: list[np.ndarray] | None, task):
    """Per layer: head scores [heads] and neuron scores [ffn size], summed over examples.

    ``batches`` are tokenized dicts of numpy arrays; ``labels`` (one array per batch, as
    scoring_batches gives them) or None to score against the model's own predictions; ``task``
    (core.task.Task) picks the scored positions. The model is left unchanged.
    """
    import torch

    layout = layout_of(model)
    layers = encoder_layers(model)
    n_heads = heads_per_layer(model)
    # a family whose heads stay (a decoder) scores none: empty head scores
    head_scores = [torch.zeros(h if layout.prunes_heads else 0) for h in n_heads]
    neuron_scores = [torch.zeros(d) for d in ffn_sizes(model)]
    masks: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        if layout.prunes_heads:
            head_size = int(attrgetter(layout.head_size)(layer))
            hooks.append((layer.get_submodule(layout.attention_output), _head_mask_hook(masks, i, n_heads[i], head_size)))
        hooks.append((layer.get_submodule(layout.ffn_out), _neuron_mask_hook(masks, i)))
    with _scoring_mode(model, hooks):
        for b, batch in enumerate(batches):
            _backward_scored_loss(model, batch, None if labels is None else labels[b], task)
            for i in range(len(layers)):
                if layout.prunes_heads:
                    head_scores[i] += masks[("head", i)].grad.abs().sum(dim=(0, 1))
                neuron_scores[i] += masks[("ffn", i)].grad.abs().sum(dim=(0, 1))
            masks.clear()
    return head_scores, neuron_scores


def choose_heads(head_scores, keep_per_layer: int | None = None, keep_ratio: float | None = None) -> list[list[int]]:
    """Current head indices to keep in each layer (sorted)."""
    import torch

    if keep_per_layer is not None:
        return [sorted(torch.argsort(s, descending=True)[:min(keep_per_layer, len(s))].tolist()) for s in head_scores]
    total = sum(len(s) for s in head_scores)
    budget = max(len(head_scores), int(round(keep_ratio * total)))
    normalised = [s / (s.norm() + 1e-12) for s in head_scores]
    keep = [{int(torch.argmax(s))} for s in normalised]  # every layer keeps its best head
    ranked = sorted(((float(s[h]), layer, h) for layer, s in enumerate(normalised) for h in range(len(s))), reverse=True)
    left = budget - len(head_scores)
    for _, layer, h in ranked:
        if left <= 0:
            break
        if h not in keep[layer]:
            keep[layer].add(h)
            left -= 1
    return [sorted(k) for k in keep]


def choose_neurons(neuron_scores, keep: int) -> list[list[int]]:
    import torch

    return [sorted(torch.argsort(s, descending=True)[:keep].tolist()) for s in neuron_scores]


def prune_heads(model, keep: list[list[int]]) -> None:
    """Remove every head not in ``keep`` (current indices), recording original ids in the config."""
    remove = {}
    for layer, kept in enumerate(keep):
        ids = original_head_ids(model, layer)
        dropped = [ids[h] for h in range(len(ids)) if h not in set(kept)]
        if dropped:
            remove[layer] = dropped
    if remove:
        model.prune_heads(remove)


def prune_ffn(model, keep: list[list[int]]) -> None:
    """Keep only the listed intermediate neurons of every layer; all layers must keep as many."""
    import torch
    from transformers.pytorch_utils import prune_conv1d_layer, prune_linear_layer

    widths = {len(k) for k in keep}
    if len(widths) != 1:
        raise ValueError(f"every layer must keep the same FFN width (config holds one number), got {sorted(widths)}")
    layout = layout_of(model)
    # the neuron axis of each projection's weight: Linear (out, in), Conv1D (in, out)
    into, out_of = (1, 0) if layout.conv1d else (0, 1)
    prune = prune_conv1d_layer if layout.conv1d else prune_linear_layer
    for layer, kept in zip(encoder_layers(model), keep):
        index = torch.tensor(kept, dtype=torch.long)
        for path, dim in [(p, into) for p in layout.ffn_in] + [(layout.ffn_out, out_of)]:
            parent, leaf = _owner(layer, path)
            setattr(parent, leaf, prune(getattr(parent, leaf), index, dim=dim))
    setattr(model.config, layout.ffn_config_key, widths.pop())


def _mean_loss(model, batches, targets, task) -> float:
    """Mean cross-entropy per scored example (a text, or a tagger's word at its first sub-token)
    against fixed targets (Task.scored_rows picks the scored positions)."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for b, batch in enumerate(batches):
            logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
            logits, target = task.scored_rows(logits, torch.from_numpy(targets[b]))
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
    return total / max(count, 1)


def _owner(root, path: str):
    """(module, attribute name) that dotted ``path`` under ``root`` names, to replace or set it."""
    parent_path, _, leaf = path.rpartition(".")
    return root.get_submodule(parent_path), leaf  # get_submodule("") is root itself


def _layer_list(model):
    """(module, attribute name) holding the model's ModuleList of layers, to swap it."""
    return _owner(model.base_model, layout_of(model).layers)


def choose_layers(model, batches, labels, keep: int, task) -> tuple[list[int], list[dict]]:
    """Greedy layer ablation: indices (current positions) of the ``keep`` layers to keep, and the
    log of each round (the loss with each remaining candidate skipped). ``labels`` None scores
    against the unpruned model's own argmax."""
    import torch

    container, attr = _layer_list(model)
    full = getattr(container, attr)
    was_training = model.training
    model.eval()
    # Fixed targets: the labels, with unlabelled texts (and a tagger's untagged words) scored
    # against the whole model's argmax, so every ablation is measured against the same targets.
    with torch.inference_mode():
        whole = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits for b in batches]
        labels = [np.asarray(task.resolve_targets(None if labels is None else torch.from_numpy(labels[b]), logits))
                  for b, logits in enumerate(whole)]
    kept, rounds = list(range(len(full))), []
    try:
        while len(kept) > keep:
            losses = {}
            for candidate in kept:
                setattr(container, attr, torch.nn.ModuleList([full[i] for i in kept if i != candidate]))
                losses[candidate] = _mean_loss(model, batches, labels, task)
            dropped = min(losses, key=losses.get)
            rounds.append({"dropped": dropped, "loss_without": {str(k): round(v, 4) for k, v in losses.items()}})
            kept.remove(dropped)
    finally:
        setattr(container, attr, full)
        model.train(was_training)
    return kept, rounds


def block_influence(model, batches) -> list[float]:
    """Per layer: 1 - the mean cosine similarity between its input and its output hidden states
    over the real (unpadded) tokens of ``batches``. A layer that barely turns its input matters
    little (Men et al. 2024, "ShortGPT": block influence). One forward pass, no targets."""
    import torch

    layers = encoder_layers(model)
    similarity: dict[int, torch.Tensor] = {}

    def capture(index: int):
        def hook(module, args, kwargs, output):
            inputs = args[0] if args else kwargs["hidden_states"]
            outputs = output[0] if isinstance(output, tuple) else output
            similarity[index] = torch.nn.functional.cosine_similarity(inputs.float(), outputs.float(), dim=-1)
        return hook

    totals, tokens = [0.0] * len(layers), 0
    handles = [layer.register_forward_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            for batch in batches:
                feed = {k: torch.from_numpy(v) for k, v in batch.items()}
                model(**feed)
                real = feed["attention_mask"].bool()
                for i in range(len(layers)):
                    totals[i] += float((1.0 - similarity[i])[real].sum())
                tokens += int(real.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [t / max(tokens, 1) for t in totals]


def choose_layers_by_influence(model, batches, keep: int) -> tuple[list[int], dict]:
    """The ``keep`` layers of highest block influence (positions, ascending), and every layer's."""
    influence = block_influence(model, batches)
    kept = sorted(sorted(range(len(influence)), key=lambda i: -influence[i])[:keep])
    return kept, {str(i): round(v, 6) for i, v in enumerate(influence)}


@contextmanager
def without_kv_cache(model):
    """A decoder's forward passes without building a KV cache (scoring needs none); restored on exit."""
    config = model.config
    previous = getattr(config, "use_cache", None)
    if previous is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if previous is not None:
            config.use_cache = previous


def drop_layers(model, kept: list[int]) -> None:
    """Keep only the listed layers (current positions, ascending); the config follows."""
    import torch

    layout = layout_of(model)
    container, attr = _layer_list(model)
    layers = getattr(container, attr)
    setattr(container, attr, torch.nn.ModuleList([layers[i] for i in kept]))
    position = {old: new for new, old in enumerate(kept)}
    pruned = {int(k): v for k, v in (model.config.pruned_heads or {}).items()}
    model.config.pruned_heads = {position[old]: heads for old, heads in pruned.items() if old in position}
    if layout.layer_index is not None:
        # a decoder's attention finds its KV cache slot by its layer index: renumber the kept
        # layers 0..n-1, as from_pretrained numbers the smaller model when it reloads
        for new, layer in enumerate(getattr(container, attr)):
            setattr(*_owner(layer, layout.layer_index), new)
    if isinstance(getattr(model.config, "layer_types", None), list):  # per-layer attention kinds
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    setattr(model.config, layout.layers_config_key, len(kept))


def semi_structured_masks(model) -> dict[str, "object"]:
    """2:4 masks (True = kept) for every encoder Linear whose input width is a multiple of 4:
    in each row, of every 4 consecutive weights the 2 largest |w| stay."""
    import torch

    layout = layout_of(model)
    masks = {}
    for name, module in model.base_model.get_submodule(layout.layers).named_modules():
        if not isinstance(module, torch.nn.Linear) or module.in_features % 4:
            continue
        w = module.weight.detach().abs().reshape(module.out_features, -1, 4)
        top = torch.topk(w, 2, dim=-1).indices
        mask = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, top, True)
        masks[name] = mask.reshape(module.weight.shape)
    return masks


def apply_masks(model, masks: dict) -> None:
    import torch

    layers = model.base_model.get_submodule(layout_of(model).layers)
    with torch.no_grad():
        for name, mask in masks.items():
            layers.get_submodule(name).weight.mul_(mask)


def zero_pattern_masks(model) -> dict:
    """The 2:4 masks of a model already pruned that way, read back from its zeros."""
    import torch

    layers = model.base_model.get_submodule(layout_of(model).layers)
    return {name: module.weight.detach() != 0 for name, module in layers.named_modules()
            if isinstance(module, torch.nn.Linear) and module.in_features % 4 == 0}


def scoring_batches(tokenizer, data, max_length: int, batch_size: int, task):
    """Length-sorted batches (little padding) with their targets (Task.training_batch), in a fixed
    order; targets None when the data has no labels. A tagger's targets are always given: its
    untagged words are marked to be scored against the model's own argmax."""
    order = np.argsort([len(t) for t in data.texts], kind="stable")
    batches, targets = [], []
    for start in range(0, len(data.texts), batch_size):
        inputs, batch_targets = task.training_batch(tokenizer, data, order[start:start + batch_size], max_length)
        batches.append(inputs)
        targets.append(batch_targets)
    return batches, (None if any(t is None for t in targets) else targets)


class PruneStructured(Pass):
    name = "prune"
    target_independent = True  # PyTorch in, PyTorch out: no target setting is read
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def cache_key_parts(self, ctx: PassContext) -> dict:
        cfg = ctx.recipe.prune
        return {"prune": cfg.model_dump(mode="json", exclude={"vocabulary"}), "max_length": ctx.recipe.max_length, "seed": ctx.seed,
                "scoring_data": ctx.calibration.head(cfg.importance_examples).content_hash()}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        import dataclasses

        import torch

        cfg = ctx.recipe.prune
        torch.manual_seed(ctx.seed)
        model = copy.deepcopy(state.torch_model)  # the original stays the reference
        before = _SizeFacts.of(model)
        data, batches, batch_labels = _scoring_data(state, ctx)
        started = time.perf_counter()
        metrics: dict = {}
        with without_kv_cache(model):
            kept_layers = _drop_least_important_layers(model, cfg, batches, batch_labels, len(data), ctx.task, metrics)
            head_scores, neuron_scores = importance_scores(model, batches, batch_labels, ctx.task)
        previous = state.annotations.get("kept_layers")  # an already layer-pruned input: map to the original
        if previous is not None:
            kept_layers = [previous[i] for i in kept_layers]
        scoring_s = time.perf_counter() - started
        logger.info("importance of %d heads and %d FFN neurons from %d examples in %.1f s",
                    sum(before.heads), sum(before.ffn), len(data), scoring_s)
        _prune_to_budget(model, cfg, head_scores, neuron_scores, before.ffn)

        annotations = {**state.annotations, "pruned": True, "kept_layers": kept_layers}
        if cfg.semi_structured_2_4:
            _apply_semi_structured_2_4(model, annotations, metrics)
        model.eval()

        after = _SizeFacts.of(model)
        metrics.update(_size_metrics(cfg, before, after, kept_layers, data, scoring_s))
        logger.info("pruned to heads %s, FFN %d: %.1fM -> %.1fM parameters, %.2f -> %.2f GFLOPs at sequence %d",
                    after.heads, after.ffn[0], before.params / 1e6, after.params / 1e6,
                    before.flops / 1e9, after.flops / 1e9, FLOPS_SEQUENCE_LENGTH)
        new_state = dataclasses.replace(state, torch_model=model, annotations=annotations)
        changed = (len(after.heads) != before.layers or after.heads != before.heads or after.ffn != before.ffn
                   or cfg.semi_structured_2_4)
        return PassResult(new_state, changed, metrics)


@dataclass(frozen=True)
class _SizeFacts:
    """Heads per layer, FFN width per layer, parameters and encoder FLOPs of a model."""

    heads: list[int]
    ffn: list[int]
    params: int
    flops: int

    @property
    def layers(self) -> int:
        return len(self.heads)

    @classmethod
    def of(cls, model) -> "_SizeFacts":
        return cls(heads_per_layer(model), ffn_sizes(model), parameter_count(model),
                   encoder_flops(model, FLOPS_SEQUENCE_LENGTH))


def _scoring_data(state: ModelState, ctx: PassContext):
    """The calibration examples importance is measured on, and their batches (model inputs only)
    with targets (None for unlabelled text: scored against the model's own argmax)."""
    cfg = ctx.recipe.prune
    data = ctx.calibration.head(cfg.importance_examples)
    input_names = set(state.tokenizer.model_input_names)
    batches, batch_labels = scoring_batches(state.tokenizer, data, cfg.max_length or ctx.recipe.max_length,
                                            cfg.batch_size, ctx.task)
    batches = [{k: v for k, v in b.items() if k in input_names} for b in batches]
    return data, batches, batch_labels


def _drop_least_important_layers(model, cfg, batches, batch_labels, examples: int, task, metrics: dict) -> list[int]:
    """With ``keep_layers`` below the layer count, drop layers by greedy ablation (the log goes to
    ``metrics["layer_ablation"]``); the positions of the layers kept."""
    layers_before = len(encoder_layers(model))
    kept_layers = list(range(layers_before))
    if cfg.keep_layers is not None and cfg.keep_layers < layers_before:
        if cfg.layer_importance == "block_influence":
            kept_layers, metrics["layer_block_influence"] = choose_layers_by_influence(model, batches, cfg.keep_layers)
        else:
            kept_layers, metrics["layer_ablation"] = choose_layers(model, batches, batch_labels, cfg.keep_layers, task)
        drop_layers(model, kept_layers)
        logger.info("kept layers %s of %d (%s on %d examples)", kept_layers, layers_before,
                    cfg.layer_importance.replace("_", " "), examples)
    return kept_layers


def _prune_to_budget(model, cfg, head_scores, neuron_scores, ffn_before: list[int]) -> None:
    """Remove the heads and FFN neurons the recipe's budget does not keep."""
    if cfg.keep_ratio is not None:
        keep_heads = choose_heads(head_scores, keep_ratio=cfg.keep_ratio)
        ffn_keep = max(1, int(round(cfg.keep_ratio * min(ffn_before))))
    else:
        keep_heads = (choose_heads(head_scores, keep_per_layer=cfg.heads_per_layer)
                      if cfg.heads_per_layer is not None else None)
        ffn_keep = cfg.ffn_neurons_per_layer
    if keep_heads is not None:
        prune_heads(model, keep_heads)
    if ffn_keep is not None and ffn_keep < max(ffn_before):
        prune_ffn(model, choose_neurons(neuron_scores, min(ffn_keep, min(ffn_before))))


def _apply_semi_structured_2_4(model, annotations: dict, metrics: dict) -> None:
    masks = semi_structured_masks(model)
    apply_masks(model, masks)
    annotations["sparsity"] = "2:4"
    metrics["sparsity"] = "2:4"
    metrics["sparse_linear_layers"] = len(masks)


def _size_metrics(cfg, before: _SizeFacts, after: _SizeFacts, kept_layers: list[int], data, scoring_s: float) -> dict:
    return {
        "layers": after.layers,
        "layers_before": before.layers,
        "kept_layers": kept_layers,
        "heads_per_layer": after.heads,
        "heads_before": before.heads,
        "ffn_size": after.ffn[0],
        "ffn_size_before": before.ffn[0],
        "head_ranking": "global" if cfg.keep_ratio is not None else "per_layer",
        "importance_examples": len(data),
        "importance_loss": "cross-entropy vs labels" if data.labels is not None else "cross-entropy vs own argmax",
        "scoring_s": round(scoring_s, 2),
        "params_before": before.params,
        "params_after": after.params,
        f"flops_seq{FLOPS_SEQUENCE_LENGTH}_before": before.flops,
        f"flops_seq{FLOPS_SEQUENCE_LENGTH}_after": after.flops,
    }
