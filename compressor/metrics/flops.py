"""A FLOPs estimate for BERT-family encoders (BERT, RoBERTa, DistilBERT), read off the modules.

Counts multiply-accumulates (MACs) of every ``nn.Linear`` and of the two attention matmuls
(Q·Kᵀ and softmax·V) for one sequence of ``sequence_length`` tokens; FLOPs = 2 × MACs.
Embedding lookups, LayerNorm, softmax, activations and biases are left out (a few percent).
Sizes come from the weights themselves, so a pruned model (fewer heads, narrower FFN, even a
different number of heads in each layer) is counted as it is. Linear layers under the encoder
run on every token; the rest (pooler, classifier head) on one vector per sequence.
For MiniLM-L6 at sequence 128 this gives 1.44 GMAC, i.e. 2.9 GFLOPs.
Decoders (causal-lm) are counted the same way for a prefill of ``sequence_length`` tokens: LLaMA's
blocks (``model.layers.``) and GPT-2's (``transformer.``, whose projections are transformers'
``Conv1D``, weight (in, out)) and the LM head run on every token.
"""

from __future__ import annotations

# Submodule names whose Linear layers run once per token (BERT/RoBERTa: encoder, DistilBERT: transformer).
_PER_TOKEN_SCOPES = ("encoder.", "transformer.", "model.layers.", "lm_head.")
# The query projection of each self-attention block: its output width is heads × head size.
_QUERY_NAMES = ("query", "q_lin", "q_proj")


def _linear_shape(module, torch) -> tuple[int, int] | None:
    """(in, out) features of a Linear, or of transformers' Conv1D (GPT-2), else None."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)
    return None


def encoder_macs(model, sequence_length: int = 128) -> int:
    import torch

    macs = 0
    for name, module in model.named_modules():
        shape = _linear_shape(module, torch)
        if shape is None:
            continue
        per_token = any(f".{scope}" in f".{name}." for scope in _PER_TOKEN_SCOPES)
        macs += (sequence_length if per_token else 1) * shape[0] * shape[1]
        if name.rsplit(".", 1)[-1] in _QUERY_NAMES:
            # Q·Kᵀ: seq × seq × (heads × head_size); softmax·V: the same again.
            macs += 2 * sequence_length * sequence_length * shape[1]
    return macs


def encoder_flops(model, sequence_length: int = 128) -> int:
    return 2 * encoder_macs(model, sequence_length)


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
