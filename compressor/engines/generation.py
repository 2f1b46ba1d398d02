"""Text generation with a decoder's KV cache, in numpy: the loop the bundle runtime generates with
and the decoder latency measurement times (metrics/decoder_latency.py), so both run the same code.

A decoder is driven through a ``Stepper``: ``prefill(ids)`` runs the prompt with an empty cache and
returns the last position's next-token logits and the cache; ``step(token, cache)`` feeds one new
token at the next position and returns its logits and the grown cache. ``OnnxDecoder`` is the
stepper of an ONNX graph exported with the cache (Optimum's ``text-generation-with-past`` layout):

- inputs ``input_ids`` [batch, sequence], ``attention_mask`` [batch, past + sequence],
  ``position_ids`` [batch, sequence] when the graph has it (some GPT-2 exports do not: the model
  then numbers positions itself from the mask), ``past_key_values.{i}.key`` / ``.value``
  [batch, kv heads, past, head dim], and ``use_cache_branch`` in merged decoder graphs;
- outputs ``logits`` [batch, sequence, vocabulary] and ``present.{i}.key`` / ``.value``, the cache
  including the new positions, fed back as the next step's past.

The first step feeds a past of length 0, as Optimum's ``ORTModelForCausalLM`` does, so one graph
serves prefill and decode. Batch 1 only: no padding, positions 0..n-1, a mask of ones.

Choosing the next token (``choose``): greedy is the argmax of the logits (ties to the lowest id, as
``torch.argmax``). Sampling divides the logits by the temperature, keeps the ``top_k`` largest
(ties at the k-th value kept, as transformers' TopKLogitsWarper), then the smallest set of most
probable tokens whose probability reaches ``top_p`` (the token that crosses it included), and
draws from the renormalised softmax with numpy's PCG64 generator seeded with ``seed``, so a seed
gives the same continuation on every run of the same model. Generation stops at a stop token
(included in the output ids, left out of the text), after ``max_new_tokens``, or when the
sequence fills the model's context.

Imports numpy only at import time; onnxruntime inside OnnxDecoder (torch-free: the bundle runtime
uses it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from mcompress.core.errors import InputError
from mcompress.core.model_config import head_dim_of
from mcompress.engines.onnxruntime_cpu import PAST_PREFIX

PRESENT_PREFIX = "present."
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy when ``temperature`` is 0, else sampled."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if type(self.max_new_tokens) is not int or self.max_new_tokens < 1:
            raise InputError(f"max new tokens {self.max_new_tokens!r} must be a whole number >= 1.")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature {self.temperature!r} must be a finite number >= 0 (0 = greedy).")
        if self.top_k is not None and (type(self.top_k) is not int or self.top_k < 1):
            raise InputError(f"top-k {self.top_k!r} must be a whole number >= 1.")
        if self.top_p is not None and not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top-p {self.top_p!r} must be in (0, 1].")
        if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
            raise InputError("top-k and top-p filter sampling, but temperature 0 is greedy decoding.",
                             "Pass a temperature > 0 (e.g. --temperature 0.8) to sample.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_probabilities(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """The distribution a sampled token is drawn from: softmax(logits / temperature) restricted to
    the top-k, then to the top-p nucleus, renormalised (float64)."""
    z = np.asarray(logits, dtype=np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < z.size:
        kth = np.partition(z, -sampling.top_k)[-sampling.top_k]
        z = np.where(z >= kth, z, -np.inf)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
        nucleus = np.zeros_like(p)
        nucleus[keep] = p[keep]
        p = nucleus / nucleus.sum()
    return p


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator | None) -> int:
    """The next token from one position's logits (module docstring)."""
    if sampling.greedy:
        return int(np.argmax(logits))
    p = sampling_probabilities(logits, sampling)
    return int(rng.choice(p.size, p=p))


class Stepper(Protocol):
    def prefill(self, ids: list[int]) -> tuple[np.ndarray, object]: ...

    def step(self, token: int, position: int, cache: object) -> tuple[np.ndarray, object]: ...


@dataclass
class Generation:
    """A continuation: the new ids (a stop token that ended it included), why it stopped ("stop
    token", "max new tokens", "context"), and the seconds of the prefill and of each decode step."""

    prompt_ids: list[int]
    new_ids: list[int]
    stopped: str
    prefill_s: float
    step_s: list[float] = field(default_factory=list)


def check_prompt(prompt_length: int, context_length: int) -> None:
    """A prompt must leave room for one new token in the model's context."""
    if prompt_length < 1:
        raise InputError("the prompt is empty after tokenization.", "Pass a prompt with at least one token.")
    if prompt_length >= context_length:
        raise InputError(f"the prompt is {prompt_length} tokens, longer than this model's context allows "
                         f"({context_length} tokens, prompt at most {context_length - 1}).",
                         "Shorten the prompt.")


def generate(stepper: Stepper, prompt_ids: list[int], sampling: Sampling, stop_ids: frozenset[int] | set[int],
             context_length: int, on_token: Callable[[int], None] | None = None) -> Generation:
    """Continue ``prompt_ids`` with the KV cache fed back step by step (module docstring);
    ``on_token(id)`` is called with each new token as soon as it is chosen (streaming)."""
    check_prompt(len(prompt_ids), context_length)
    rng = None if sampling.greedy else np.random.default_rng(sampling.seed)
    started = time.perf_counter()
    logits, cache = stepper.prefill(list(prompt_ids))
    result = Generation(list(prompt_ids), [], "max new tokens", time.perf_counter() - started)
    while True:
        token = choose(logits, sampling, rng)
        result.new_ids.append(token)
        if on_token is not None:
            on_token(token)
        length = len(prompt_ids) + len(result.new_ids)
        if token in stop_ids:
            result.stopped = "stop token"
            break
        if len(result.new_ids) >= sampling.max_new_tokens:
            break
        if length >= context_length:
            result.stopped = "context"
            break
        started = time.perf_counter()
        logits, cache = stepper.step(token, length - 1, cache)
        result.step_s.append(time.perf_counter() - started)
    return result


def kv_shape_of(config: dict) -> tuple[int, int] | None:
    """(KV heads, head size) from a config.json (LLaMA's num_key_value_heads/head_dim, GPT-2's
    n_head/n_embd), or None when it does not say."""
    kv_heads = config.get("num_key_value_heads", config.get("num_attention_heads", config.get("n_head")))
    head_dim = head_dim_of(config)
    return (kv_heads, head_dim) if type(kv_heads) is int and type(head_dim) is int else None


def context_length_of(config: dict) -> int | None:
    """The longest sequence the model was built for (max_position_embeddings; GPT-2's n_positions)."""
    return next((config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx")
                 if type(config.get(k)) is int and config[k] >= 2), None)


FED_INPUTS = ("input_ids", "attention_mask", "position_ids", "use_cache_branch")
EXPORT_HINT = "Export it with Optimum's text-generation-with-past (ORTModelForCausalLM, use_cache=True)."


def graph_problem(input_names: list[str], output_names: list[str]) -> str | None:
    """What keeps a graph from being decoded with its KV cache by this loop, or None: the inputs
    and outputs of the module docstring, every past input with its present output."""
    missing = [n for n in ("input_ids", "attention_mask") if n not in input_names]
    if "logits" not in output_names:
        missing.append("a logits output")
    if missing:
        return f"is not a decoder graph exported with its KV cache: it lacks {', '.join(missing)}"
    past = [n for n in input_names if n.startswith(PAST_PREFIX)]
    if not past:
        return "has no past_key_values inputs, so it cannot decode with a KV cache"
    unfed = [n for n in input_names if n not in FED_INPUTS and n not in past]
    if unfed:
        return f"has inputs a decoder is not fed: {', '.join(unfed)}"
    orphans = [n for n in past if PRESENT_PREFIX + n[len(PAST_PREFIX):] not in output_names]
    if orphans:
        return f"has past input {orphans[0]} but no present output to feed it back from"
    return None


@dataclass(frozen=True)
class _PastInput:
    name: str  # past_key_values.{i}.key / .value
    output: str  # present.{i}.key / .value
    dtype: type
    heads: int
    head_dim: int


class OnnxDecoder:
    """A ``Stepper`` over an ONNX Runtime session of a graph exported with the KV cache. ``kv_shape``:
    (kv heads, head dim) for graphs whose past inputs leave those axes symbolic (from the model's
    config)."""

    def __init__(self, session, kv_shape: tuple[int, int] | None = None, where: str = "model"):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        problem = graph_problem(list(inputs), outputs)
        if problem:
            raise InputError(f"{where} {problem}.", EXPORT_HINT)
        self.ids_dtype = ORT_DTYPES.get(inputs["input_ids"].type, np.int64)
        self.mask_dtype = ORT_DTYPES.get(inputs["attention_mask"].type, np.int64)
        self.has_positions = "position_ids" in inputs
        self.has_branch = "use_cache_branch" in inputs
        self.past = [self._past_input(spec, kv_shape, where) for name, spec in inputs.items() if name.startswith(PAST_PREFIX)]
        self.output_names = ["logits", *(p.output for p in self.past)]

    @staticmethod
    def _past_input(spec, kv_shape, where: str) -> _PastInput:
        output = PRESENT_PREFIX + spec.name[len(PAST_PREFIX):]
        shape = list(spec.shape)
        static = [d if isinstance(d, int) else None for d in shape[1:2] + shape[3:4]] if len(shape) == 4 else [None, None]
        heads, head_dim = [s if s is not None else (kv_shape[i] if kv_shape else None) for i, s in enumerate(static)]
        if heads is None or head_dim is None:
            raise InputError(f"{where}: the shape of {spec.name} ({shape}) does not give the KV heads and head size, "
                             "and the model's config does not either.")
        return _PastInput(spec.name, output, ORT_DTYPES.get(spec.type, np.float32), int(heads), int(head_dim))

    def _run(self, ids: list[int], start: int, past: list[np.ndarray], first: bool, every_position: bool = False):
        total = start + len(ids)
        feed = {"input_ids": np.asarray([ids], dtype=self.ids_dtype),
                "attention_mask": np.ones((1, total), dtype=self.mask_dtype)}
        if self.has_positions:
            feed["position_ids"] = np.arange(start, total, dtype=np.int64)[None, :]
        if self.has_branch:
            feed["use_cache_branch"] = np.asarray([not first])
        feed.update({p.name: value for p, value in zip(self.past, past)})
        logits, *present = self.session.run(self.output_names, feed)
        return np.asarray(logits[0] if every_position else logits[0, -1], dtype=np.float32), present

    def empty_past(self) -> list[np.ndarray]:
        return [np.zeros((1, p.heads, 0, p.head_dim), dtype=p.dtype) for p in self.past]

    def prefill(self, ids):
        return self._run(ids, 0, self.empty_past(), True)

    def step(self, token, position, cache):
        return self._run([token], position, cache, False)

    def window_logits(self, ids: list[int]) -> np.ndarray:
        """The next-token logits at every position of ``ids`` from an empty cache: [len(ids), vocabulary]."""
        return self._run(ids, 0, self.empty_past(), True, every_position=True)[0]
