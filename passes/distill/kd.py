"""Distill: train the incoming (usually pruned) model to imitate the original checkpoint.

Teacher: the original FP32 checkpoint, loaded again from ``state.source`` (frozen, eval mode).
Student: a copy of the incoming model. Loss per batch, with temperature T and weight alpha:

    alpha * KL(softmax(t/T) || softmax(s/T)) * T^2  +  (1 - alpha) * CE(s, y)
    + hidden_weight * mean over matched layers of MSE(student hidden, teacher hidden)

where y are the train split's labels, or the teacher's argmax for unlabelled text, and the
hidden-state term compares the [CLS] state (``hidden_tokens: cls``) or every non-padding token
(``all``) of each student layer with its teacher layer: the layer it was copied from when
pruning dropped layers (annotation ``kept_layers``), else layer i of L_s with layer
round(i L_t / L_s) of the teacher (1-based; equal counts pair one to one). Training text is ``ctx.calibration`` (the train split), shuffled each
epoch with the recipe seed; AdamW with linear warm-up and linear decay.

Early stopping: every ``eval_every`` steps and at the end, the student is evaluated on the
selection (validation) split at the recipe's max_length; the best weights are kept (accuracy, ties
broken by lower cross-entropy) and training stops after ``patience`` evaluations without
improvement. The pass returns the best weights, not the last.

Device: ``distill.device`` ``auto`` trains on the first CUDA GPU when torch sees one, else on the
CPU; the student is returned on the CPU. Results on a GPU differ from CPU ones in rounding only.

Resume: every ``checkpoint_every`` steps (and on Ctrl-C) the student, optimizer, scheduler, step,
best weights and RNG state are saved to ``<resume dir>/distill-<key>.pt``, where the key hashes
everything that determines the run (source checkpoint, incoming weights, distill settings, seed,
training data). A run that finds a checkpoint with its key continues from that step; the file is
deleted when the pass finishes. The resume dir is ``ctx.resume_dir`` (the job sets it to
``<cache dir>/resume``, shared with the fallback search), else ``ctx.work_dir / "distill-resume"``
(scratch space: with ``--no-cache``, resuming works only within one run).

A model pruned 2:4 (annotation ``sparsity: "2:4"``) keeps its pattern: the zero mask is read from
the incoming weights and re-applied after every optimizer step.

A tagger (token classification) is distilled word by word: KL and CE are taken at each word's
first sub-token (the positions it is scored at, calibration/tagged.py) and averaged over the
words of the batch; untagged words are trained towards the teacher's argmax. The hidden-state
term is unchanged. Early stopping ranks by the selection split's entity F1.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np

from mcompress.core.hashing import json_digest
from mcompress.core.training import linear_warmup_decay
from mcompress.core.checkpoint import load_model_and_tokenizer
from mcompress.metrics.evaluation import TorchRunner
from mcompress.core.pass_base import Pass, PassContext, PassResult
from mcompress.core.state import ModelKind, ModelState

logger = logging.getLogger(__name__)


def distillation_loss(student_logits, teacher_logits, targets, temperature: float, alpha: float):
    """(total, kl, ce): KL(teacher_T || student_T) * T^2 weighted alpha, CE weighted 1 - alpha, on
    2-D rows of logits (Task.scored_rows: a tagger's words at their first sub-tokens)."""
    import torch.nn.functional as F

    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    ce = F.cross_entropy(student_logits, targets)
    return alpha * kl + (1 - alpha) * ce, kl, ce


def hidden_state_loss(student_hidden, teacher_hidden, attention_mask, tokens: str,
                      teacher_layers: list[int] | None = None):
    """MSE between matched layers' hidden states (tuples include the embeddings at index 0).
    ``teacher_layers[i]`` is the 0-based teacher layer student layer i was copied from."""
    import torch

    ls, lt = len(student_hidden) - 1, len(teacher_hidden) - 1
    if teacher_layers is not None and len(teacher_layers) == ls:
        pairs = [(i + 1, t + 1) for i, t in enumerate(teacher_layers)]
    else:
        pairs = [(i, round(i * lt / ls)) for i in range(1, ls + 1)]
    losses = []
    for si, ti in pairs:
        s, t = student_hidden[si], teacher_hidden[ti]
        if tokens == "cls":
            losses.append(torch.nn.functional.mse_loss(s[:, 0], t[:, 0]))
        else:
            mask = attention_mask.unsqueeze(-1).to(s.dtype)
            losses.append(((s - t) ** 2 * mask).sum() / (mask.sum() * s.shape[-1]))
    return torch.stack(losses).mean()


def resolve_device(name: str):
    """``auto``: the first CUDA GPU when torch sees one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("recipe distill.device is cuda, but torch sees no CUDA GPU; set it to auto or cpu")
    return torch.device(name)


def _state_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resume_dir(ctx: PassContext) -> Path:
    return Path(ctx.resume_dir) if ctx.resume_dir else Path(ctx.work_dir) / "distill-resume"


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """Step counts of one run: ``total`` optimizer steps, the first ``warmup`` warming up, an
    evaluation on the selection split every ``eval_every``."""

    steps_per_epoch: int
    total: int
    warmup: int
    eval_every: int

    @classmethod
    def of(cls, cfg, examples: int) -> "_Schedule":
        steps_per_epoch = math.ceil(examples / cfg.batch_size)
        total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return cls(steps_per_epoch, total, int(cfg.warmup_ratio * total), cfg.eval_every or max(1, math.ceil(total / 4)))


def _frozen_teacher(source, device):
    """The original checkpoint, loaded again: eval mode, no gradients."""
    teacher, _ = load_model_and_tokenizer(source)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _trainable_student(model, device):
    """A copy of the incoming model (it may be the reference, which must stay untouched), every
    parameter trainable."""
    student = copy.deepcopy(model).to(device)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def _optimizer(student, cfg, schedule: _Schedule):
    """AdamW (no weight decay on biases and LayerNorm) and its linear warm-up/decay scheduler."""
    import torch

    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]  # biases, LayerNorm
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    return optimizer, linear_warmup_decay(optimizer, schedule.warmup, schedule.total)


def _run_key(state: ModelState, ctx: PassContext, student, data, selection) -> str:
    """Hash of everything that determines the run: names its resume checkpoint."""
    return json_digest({
        "source": state.source.content_hash, "student": _state_digest(student),
        "distill": ctx.recipe.distill.model_dump(mode="json"), "seed": ctx.seed, "max_length": ctx.recipe.max_length,
        "train": data.content_hash(), "selection": selection.content_hash(),
    })[:20]


class _Training:
    """One distillation run: the models, the optimizer and the loop state a resume checkpoint holds."""

    def __init__(self, state: ModelState, ctx: PassContext, device, teacher, student, masks, data, selection,
                 checkpoint_path: Path):
        self.cfg, self.ctx, self.task, self.tokenizer = ctx.recipe.distill, ctx, ctx.task, state.tokenizer
        self.device, self.teacher, self.student, self.masks = device, teacher, student, masks
        self.teacher_layers = state.annotations.get("kept_layers")
        self.data, self.selection, self.checkpoint_path = data, selection, checkpoint_path
        self.max_length = self.cfg.max_length or ctx.recipe.max_length
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                            if n in self.tokenizer.model_input_names]
        self.schedule = _Schedule.of(self.cfg, len(data))
        self.optimizer, self.scheduler = _optimizer(student, self.cfg, self.schedule)
        # Everything the loop carries between steps: saved whole in a resume checkpoint.
        self.run = {"step": 0, "best_score": None, "best_step": None, "best_state": None, "stale": 0, "history": [],
                    "losses": []}
        self.examples = 0
        # False while a step is half applied: an interrupt then saves nothing (the last periodic
        # checkpoint stays). The RNG state is taken at the last step boundary, before dropout draws.
        self.consistent, self.boundary_rng = True, None

    def resume(self) -> int:
        """Load the checkpoint at ``checkpoint_path``; the step it continues from."""
        import torch

        saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        self.student.load_state_dict(saved["student"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["cpu"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"]["cuda"], self.device)
        self.run = saved["run"]
        logger.info("distill: resuming from step %d of %d (%s)", self.run["step"], self.schedule.total,
                    self.checkpoint_path)
        return self.run["step"]

    def save_checkpoint(self) -> None:
        import torch

        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save({"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": self.boundary_rng, "run": self.run}, tmp)
        tmp.replace(self.checkpoint_path)

    def rng_state(self) -> dict:
        """The generators dropout draws from: the CPU's, and the GPU's when training there."""
        import torch

        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def batch_at(self, step: int):
        """The batch of ``step``: its epoch's permutation of the training data (seeded by the recipe
        seed and the epoch), so a resumed run sees the same data order."""
        import torch

        epoch, position = divmod(step, self.schedule.steps_per_epoch)
        order = np.random.default_rng([self.ctx.seed, epoch]).permutation(len(self.data))
        idx = order[position * self.cfg.batch_size:(position + 1) * self.cfg.batch_size]
        inputs, targets = self.task.training_batch(self.tokenizer, self.data, idx, self.max_length)
        return ({n: torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names},
                None if targets is None else torch.from_numpy(targets).to(self.device))

    def selection_score(self) -> tuple[float, float]:
        """(the task's score, cross-entropy) of the student on the selection split."""
        import torch

        recipe = self.ctx.recipe
        result = self.task.evaluate(TorchRunner(self.student), self.tokenizer, self.selection, recipe.max_length,
                                    recipe.eval.batch_size)
        logits = torch.from_numpy(result.logits)
        ce = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(result.logit_labels()).long()))
        return result.score, ce

    def loss(self, feed, batch_labels):
        """(total, kl, ce) of the student against the teacher on one batch (module docstring)."""
        import torch

        cfg, use_hidden = self.cfg, self.cfg.hidden_weight > 0
        with torch.no_grad():
            t_out = self.teacher(**feed, output_hidden_states=use_hidden)
        s_out = self.student(**feed, output_hidden_states=use_hidden)
        # open targets (unlabelled text, untagged words) are the teacher's argmax
        targets = self.task.resolve_targets(batch_labels, t_out.logits)
        student_rows, row_targets = self.task.scored_rows(s_out.logits, targets)
        teacher_rows, _ = self.task.scored_rows(t_out.logits, targets)
        loss, kl, ce = distillation_loss(student_rows, teacher_rows, row_targets, cfg.temperature, cfg.alpha)
        if use_hidden:
            loss = loss + cfg.hidden_weight * hidden_state_loss(
                s_out.hidden_states, t_out.hidden_states, feed["attention_mask"], cfg.hidden_tokens,
                self.teacher_layers)
        return loss, kl, ce

    def train_step(self) -> None:
        """One optimizer step on the next batch (the 2:4 pattern re-applied after it)."""
        from mcompress.passes.prune.structured import apply_masks

        feed, batch_labels = self.batch_at(self.run["step"])
        loss, kl, ce = self.loss(feed, batch_labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.consistent = False
        self.optimizer.step()
        self.scheduler.step()
        if self.masks:
            apply_masks(self.student, self.masks)
        self.run["step"] += 1
        self.run["losses"].append((loss.item(), kl.item(), ce.item()))
        self.examples += len(feed["input_ids"])

    def evaluate(self, step: int) -> None:
        """Score the selection split, keep the weights if they are the best so far, log the figures."""
        run, losses = self.run, self.run["losses"]  # (loss, kl, ce) of the steps since the last evaluation
        accuracy, sel_ce = self.selection_score()
        self.student.train()
        mean = np.mean(losses, axis=0) if losses else (float("nan"),) * 3
        losses.clear()
        score = (accuracy, -sel_ce)
        improved = run["best_score"] is None or score > tuple(run["best_score"])
        if improved:
            run["best_score"], run["best_step"], run["stale"] = list(score), step, 0
            run["best_state"] = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        else:
            run["stale"] += 1
        run["history"].append({"step": step, "loss": round(float(mean[0]), 4), "kl": round(float(mean[1]), 4),
                               "ce": round(float(mean[2]), 4), "selection_accuracy": round(accuracy, 4),
                               "selection_ce": round(sel_ce, 4)})
        if self.ctx.on_progress:
            self.ctx.on_progress("distill", {"step": step, "total_steps": self.schedule.total, "selection_score": accuracy,
                                             "reference_selection_score": self.ctx.reference_selection_score})
        logger.info("distill step %d/%d: loss %.4f (KL·T² %.4f, CE %.4f), selection accuracy %.4f "
                    "(best %.4f at step %d; teacher %.4f)", step, self.schedule.total, mean[0], mean[1], mean[2],
                    accuracy, run["best_score"][0], run["best_step"], self.ctx.reference_selection_score)

    def train(self) -> float:
        """Train until the schedule ends or patience runs out; the seconds it took. Ctrl-C saves a
        resume checkpoint when it lands between steps."""
        cfg, total, eval_every = self.cfg, self.schedule.total, self.schedule.eval_every
        advance = self.ctx.progress("distilling", total) if self.ctx.progress else (lambda n: None)
        advance(self.run["step"])
        started, self.examples = time.perf_counter(), 0
        self.consistent, self.boundary_rng = True, self.rng_state()
        self.student.train()
        try:
            while self.run["step"] < total:
                self.train_step()
                step = self.run["step"]
                if step % eval_every == 0 or step == total:
                    self.evaluate(step)
                    if self.run["stale"] >= cfg.patience:
                        logger.info("distill: early stop at step %d, no improvement in %d evaluations", step, cfg.patience)
                        break
                # The step and its evaluation are complete: a resume may start here.
                self.consistent, self.boundary_rng = True, self.rng_state()
                advance(1)
                if step % cfg.checkpoint_every == 0 and step < total:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.consistent:
                self.save_checkpoint()
                logger.warning("distill interrupted at step %d; resume state saved to %s", self.run["step"],
                               self.checkpoint_path)
            raise
        return time.perf_counter() - started

    def metrics(self, resumed_from: int | None, elapsed: float) -> dict:
        cfg, run, data, total = self.cfg, self.run, self.data, self.schedule.total
        return {
            "steps": run["step"], "total_steps": total, "epochs": round(run["step"] / self.schedule.steps_per_epoch, 3),
            "train_examples": len(data), "train_labels": "given" if data.labels is not None else "teacher argmax",
            "batch_size": cfg.batch_size, "max_length": self.max_length, "temperature": cfg.temperature,
            "alpha": cfg.alpha, "hidden_weight": cfg.hidden_weight, "device": str(self.device),
            "best_step": run["best_step"], "selection_accuracy": round(run["best_score"][0], 4),
            "teacher_selection_accuracy": round(self.ctx.reference_selection_score, 4),
            "early_stopped": run["step"] < total, "resumed_from_step": resumed_from,
            "train_s": round(elapsed, 1), "examples_per_s": round(self.examples / elapsed, 1) if elapsed > 0 else None,
            "history": run["history"],
        }


class Distill(Pass):
    name = "distill"
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def cache_key_parts(self, ctx: PassContext) -> dict:
        # The teacher is the source checkpoint, which roots the cache's key chain.
        cfg = ctx.recipe.distill
        return {"distill": cfg.model_dump(mode="json"), "max_length": ctx.recipe.max_length, "seed": ctx.seed,
                "train": ctx.calibration.head(cfg.train_examples).content_hash(),
                "selection": ctx.selection.head(cfg.eval_examples).content_hash()}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        import torch

        from mcompress.passes.prune.structured import zero_pattern_masks

        cfg = ctx.recipe.distill
        device = resolve_device(cfg.device)
        torch.manual_seed(ctx.seed)
        teacher = _frozen_teacher(state.source, device)
        student = _trainable_student(state.torch_model, device)
        masks = zero_pattern_masks(student) if state.annotations.get("sparsity") == "2:4" else None
        data = ctx.calibration.head(cfg.train_examples)
        if len(data) == 0:
            raise ValueError("no training text")
        selection = ctx.selection.head(cfg.eval_examples)
        checkpoint_path = resume_dir(ctx) / f"distill-{_run_key(state, ctx, student, data, selection)}.pt"
        training = _Training(state, ctx, device, teacher, student, masks, data, selection, checkpoint_path)
        resumed_from = None
        if checkpoint_path.is_file():
            try:
                resumed_from = training.resume()
            except Exception as err:  # a truncated or foreign file: start over
                logger.warning("distill: cannot resume from %s (%s); starting from step 0", checkpoint_path, err)
                checkpoint_path.unlink(missing_ok=True)
                return self.call(state, ctx)
        elapsed = training.train()

        student.load_state_dict(training.run["best_state"])
        student.cpu().eval()
        checkpoint_path.unlink(missing_ok=True)
        metrics = training.metrics(resumed_from, elapsed)
        del teacher, training
        return PassResult(dataclasses.replace(state, torch_model=student), True, metrics)
