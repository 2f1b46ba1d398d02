"""Vocabulary pruning: keep the word pieces the task's text uses, drop the rest of the embedding.

MiniLM-L6's word embedding is 30,522 × 384 = 11.7M of its 22.7M weights; a fine-tuned classifier's
training text uses a few thousand of those pieces. This pass keeps

- every piece the tokenizer produces on the training (calibration) text, ``min_count`` times or more;
- the special tokens (the tokenizer's added tokens, e.g. [PAD] [UNK] [CLS] [SEP] [MASK]);
- the reserve (``reserve: single-characters``): every one-character piece and its continuation
  form ("a", "##a"), so that a word made of characters the vocabulary knows still segments into
  kept pieces instead of becoming [UNK];

and renumbers them in their original order (so [PAD] stays 0 when it was 0), slices the embedding
rows to match, sets ``config.vocab_size`` and writes a tokenizer (tokenizer.json, vocab.txt,
tokenizer_config.json, special_tokens_map.json) whose vocabulary is exactly the kept pieces.

Why the training text keeps its segmentation: WordPiece segments a word greedily, longest piece
first. If the full vocabulary split a word into pieces p1..pk, all kept, then at each position the
longest kept piece that matches is still p_i (p_i is in the smaller vocabulary, and nothing longer
was in the larger one), so the split is the same. Words of other text may split differently (into
shorter kept pieces); the pass measures how often on the selection split, which it did not see:
the share of its tokens that are no longer in the vocabulary and the share of its texts whose
token sequence changed. The gate then measures what that costs on the eval data.

Only WordPiece tokenizers (BERT family) are pruned; a BPE or Unigram tokenizer is refused with a
clear line, since dropping pieces from their merges or scores changes segmentation everywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import TOKENIZER_DIR, ModelKind, ModelState
from mcompress.metrics.tokenization import TOKENIZE_CHUNK, segmentation_change

logger = logging.getLogger(__name__)


class VocabularyPruningError(InputError):
    """The checkpoint's tokenizer cannot be pruned (not WordPiece, or a layout this pass does not know)."""


def piece_counts(tokenizer, texts: list[str]) -> Counter:
    """How often each token id occurs when ``texts`` are tokenized without truncation or specials."""
    counts: Counter = Counter()
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        encoded = tokenizer(texts[start:start + TOKENIZE_CHUNK], add_special_tokens=False, truncation=False)
        for ids in encoded["input_ids"]:
            counts.update(ids)
    return counts


def _wordpiece_model(spec: dict) -> dict:
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise VocabularyPruningError(
            f"prune.vocabulary supports WordPiece tokenizers (BERT family); this checkpoint's is {model.get('type')!r}.",
            "Remove prune.vocabulary from the recipe for this model.")
    return model


def kept_ids(spec: dict, counts: Counter, reserve: str, min_count: int) -> list[int]:
    """Old ids to keep, ascending: specials, the pieces used ``min_count`` times, and the reserve."""
    model = _wordpiece_model(spec)
    vocab: dict[str, int] = model["vocab"]
    prefix = model.get("continuing_subword_prefix", "##")
    keep = {t["id"] for t in spec.get("added_tokens", [])}
    keep.add(vocab[model["unk_token"]])
    keep.update(i for i, n in counts.items() if n >= min_count)
    if reserve == "single-characters":
        keep.update(i for piece, i in vocab.items()
                    if len(piece) == 1 or (piece.startswith(prefix) and len(piece) == len(prefix) + 1))
    return sorted(keep)


def _remap_post_processor(processor: dict | None, new_id) -> None:
    """Special-token ids inside the post-processor (TemplateProcessing, BertProcessing, Sequence)."""
    if not processor:
        return
    kind = processor.get("type")
    if kind == "TemplateProcessing":
        for token in processor.get("special_tokens", {}).values():
            token["ids"] = [new_id(i) for i in token["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], new_id(processor[key][1])]
    elif kind == "Sequence":
        for inner in processor.get("processors", []):
            _remap_post_processor(inner, new_id)
    elif kind not in ("ByteLevel",):
        raise VocabularyPruningError(f"prune.vocabulary does not know the tokenizer's post-processor {kind!r}.",
                                     "Remove prune.vocabulary from the recipe for this model.")


def pruned_tokenizer_spec(spec: dict, keep: list[int]) -> dict:
    """tokenizer.json's content with only the ``keep`` ids, renumbered 0..len(keep)-1 in order."""
    spec = copy.deepcopy(spec)
    model = _wordpiece_model(spec)
    renumbered = {old: new for new, old in enumerate(keep)}

    def new_id(old: int) -> int:
        if old not in renumbered:
            raise VocabularyPruningError(f"the tokenizer refers to token id {old}, which the pruned vocabulary lacks.",
                                         "Remove prune.vocabulary from the recipe for this model.")
        return renumbered[old]

    model["vocab"] = {piece: renumbered[i] for piece, i in sorted(model["vocab"].items(), key=lambda kv: kv[1])
                      if i in renumbered}
    for token in spec.get("added_tokens", []):
        token["id"] = new_id(token["id"])
    _remap_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id(spec["padding"]["pad_id"])
    return spec


def write_tokenizer_files(source_dir: Path, spec: dict, keep: list[int], out_dir: Path) -> None:
    """tokenizer.json from ``spec``; vocab.txt in the new id order; tokenizer_config.json with its
    added-token ids renumbered; special_tokens_map.json as the source's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    pieces = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    (out_dir / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces), encoding="utf-8")
    config_path = source_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        renumbered = {old: new for new, old in enumerate(keep)}
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(renumbered[int(i)]): entry
                                              for i, entry in config["added_tokens_decoder"].items()
                                              if int(i) in renumbered}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")
    special = source_dir / "special_tokens_map.json"
    if special.is_file():
        (out_dir / "special_tokens_map.json").write_bytes(special.read_bytes())


def slice_input_embeddings(model, keep: list[int]) -> None:
    """The word-embedding rows of ``keep``, in order, as the model's input embedding; config.vocab_size."""
    import torch

    old = model.get_input_embeddings()
    index = torch.as_tensor(keep, dtype=torch.long)
    padding_idx = old.padding_idx
    new = torch.nn.Embedding(len(keep), old.embedding_dim,
                             padding_idx=keep.index(padding_idx) if padding_idx in keep else None)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(0, index))
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)


class PruneVocabulary(Pass):
    name = "vocabulary"
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def cache_key_parts(self, ctx: PassContext) -> dict:
        return {"vocabulary": ctx.recipe.prune.vocabulary.model_dump(mode="json"),
                "training_text": ctx.calibration.content_hash()}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        from transformers import AutoTokenizer

        cfg = ctx.recipe.prune.vocabulary
        source_dir = state.tokenizer_files_dir
        tokenizer_json = source_dir / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise VocabularyPruningError(f"prune.vocabulary needs {tokenizer_json} (a fast tokenizer's file).",
                                         "Save the checkpoint with a fast tokenizer, or remove prune.vocabulary.")
        spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        counts = piece_counts(state.tokenizer, ctx.calibration.texts)
        keep = kept_ids(spec, counts, cfg.reserve, cfg.min_count)
        out_dir = ctx.work_dir / "vocabulary" / "tokenizer"
        write_tokenizer_files(source_dir, pruned_tokenizer_spec(spec, keep), keep, out_dir)
        tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
        model = copy.deepcopy(state.torch_model)
        slice_input_embeddings(model, keep)
        model.eval()
        before = len(spec["model"]["vocab"])
        metrics = {"vocabulary_kept": len(keep), "vocabulary_before": before,
                   "vocabulary_share": round(len(keep) / before, 4), "reserve": cfg.reserve,
                   "training_texts": len(ctx.calibration),
                   "selection_split": segmentation_change(state.tokenizer, tokenizer, ctx.selection.texts)}
        logger.info("vocabulary: kept %d of %d pieces; on the selection split %.2f%% of tokens resegmented",
                    len(keep), before, 100 * metrics["selection_split"]["tokens_out_of_vocabulary"])
        annotations = {**state.annotations, TOKENIZER_DIR: out_dir}
        new_state = dataclasses.replace(state, torch_model=model, tokenizer=tokenizer, annotations=annotations)
        return PassResult(new_state, len(keep) < before, metrics)
