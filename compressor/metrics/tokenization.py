"""How a build's tokenizer segments text compared with the original's (a pruned vocabulary).

``tokens_out_of_vocabulary``: the share of the original segmentation's tokens that the new
vocabulary lacks (each such word is split differently); ``texts_resegmented``: the share of texts
whose token sequence changed (compared as piece strings, since the ids were renumbered).
"""

from __future__ import annotations

TOKENIZE_CHUNK = 1024  # texts per tokenizer call


def segmentation_change(old_tokenizer, new_tokenizer, texts: list[str]) -> dict:
    """On held-out ``texts``: the share of tokens (old segmentation) no longer in the vocabulary,
    and the share of texts whose token sequence changed."""
    new_vocab = new_tokenizer.get_vocab()
    old_vocab = {i: piece for piece, i in old_tokenizer.get_vocab().items()}
    tokens = dropped = changed = 0
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start:start + TOKENIZE_CHUNK]
        old_ids = old_tokenizer(chunk, add_special_tokens=False)["input_ids"]
        new_ids = new_tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for before, after in zip(old_ids, new_ids):
            tokens += len(before)
            dropped += sum(old_vocab[i] not in new_vocab for i in before)
            changed += [old_vocab[i] for i in before] != new_tokenizer.convert_ids_to_tokens(after)
    return {"tokens": tokens, "tokens_out_of_vocabulary": round(dropped / tokens, 6) if tokens else 0.0,
            "texts_resegmented": round(changed / len(texts), 6) if texts else 0.0}
