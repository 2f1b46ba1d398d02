"""Sizes read from a config.json under each model family's names, without loading anything: what
the torch-free runtime (engines.generation: the KV cache's shape) and the checkpoint's validation
(core.checkpoint) both need."""

from __future__ import annotations

# The same size under each family's name: BERT/LLaMA, DistilBERT, GPT-2.
HIDDEN_KEYS = ("hidden_size", "dim", "n_embd")
HEADS_KEYS = ("num_attention_heads", "n_heads", "n_head")


def head_dim_of(config: dict) -> int | None:
    """The size of one attention head: the config's head_dim (LLaMA may set it apart from the
    hidden size), else hidden size / heads under each family's name; None when it does not say."""
    if type(config.get("head_dim")) is int:
        return config["head_dim"]
    hidden = next((config[k] for k in HIDDEN_KEYS if type(config.get(k)) is int), None)
    heads = next((config[k] for k in HEADS_KEYS if type(config.get(k)) is int and config[k] > 0), None)
    return hidden // heads if hidden is not None and heads is not None else None
