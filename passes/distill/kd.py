"""Distill: train the incoming (usually pruned) model to imitate the original checkpoint.

Teacher: the original FP32 checkpoint, loaded again from ``state.source`` (frozen, eval mode).
Student: a copy of the incoming model. Loss per batch, with temperature T and weight alpha:

    alpha * KL(softmax(t/T) || softmax(s/T)) * T^2  +  (1 - alpha) * CE(s, y)
    + hidden_weight * mean over matched layers of MSE(student hidden, teacher hidden)

where y are the train split's labels, or the teacher's argmax for unlabelled text, and the
hidden-state term compares the [CLS] state (``hidden_tokens: cls``) or every non-padding token
(``all``) of each student layer with its teacher layer: the layer it was copied from when
pruning dropped layers (annotation ``kept_layers``), else layer i of L_s with layer
round(i L_t / L_s) of the teacher (1-based; equal counts pair one to one). Training text is
``ctx.calibration`` (the train split), in a seeded order per epoch (torch's DistributedSampler,
seed = recipe seed, ``set_epoch``; passes/distill/data_parallel.py); AdamW with linear warm-up and
linear decay.

Early stopping: every ``eval_every`` steps and at the end, the student is evaluated on the
selection (validation) split at the recipe's max_length; the best weights are kept (accuracy, ties
broken by lower cross-entropy) and training stops after ``patience`` evaluations without
improvement. The pass returns the best weights, not the last.

Device: ``distill.device`` ``auto`` trains on the first CUDA GPU when torch sees one, else on the
CPU; the student is returned on the CPU. Results on a GPU differ from CPU ones in rounding only.

Time limit: with ``distill.time_limit_s`` the step count is measured, not given. Before training,
rank 0 times three steps on the student (its weights and RNG put back afterwards) and one
evaluation on 64 selection examples scaled to the split, and trains

    steps = min(configured steps, floor((time_limit_s - 5 * evaluation_s) / step_s))

(five evaluations: every total/4 steps and the last), which is then an ordinary schedule of that
many steps: ``distill.steps`` of the same count gives the same run. The count is in the pass's
metrics (``planned_steps``, with the probe's timings) and in resume checkpoints, so a resumed run
keeps it. The default CPU build's time budget sets this (pipeline/budget.py).

Resume: every ``checkpoint_every`` steps (and on Ctrl-C) the student, optimizer, scheduler, step,
best weights and RNG state are saved to ``<resume dir>/distill-<key>.pt``, where the key hashes
everything that determines the run (source checkpoint, incoming weights, distill settings, seed,
training data). A run that finds a checkpoint with its key continues from that step; the file is
deleted when the pass finishes. The resume dir is ``ctx.resume_dir`` (the job sets it to
``<cache dir>/resume``, shared with the fallback search), else ``ctx.work_dir / "distill-resume"``
(scratch space: with ``--no-cache``, resuming works only within one run).

Data parallel (a launch by torchrun or ``accelerate launch``, engines/distributed.py): rank 0 runs
the pass and announces it to the other ranks, which wait for it; every rank then loads the
teacher (eval mode, no gradients), wraps its copy of the student in DistributedDataParallel and
trains on its shard of each epoch's order, ``batch_size`` examples per rank, so a step's global
batch is world size x batch_size (data_parallel.py: the N ranks' batch k is the one-process batch
k at N x batch_size). The selection score and early stopping are computed on rank 0 and the
decision broadcast; rank 0 writes resume checkpoints (with every rank's RNG state, gathered) and
sends the one it finds to every rank, so nodes need no shared disk. Ctrl-C saves nothing under a
launcher (a rank may be gone); a lost rank raises RankLost on rank 0, naming the checkpoint step
a rerun resumes from. The world size is part of the cache key and of the checkpoint's key.

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
from mcompress.engines import distributed
from mcompress.passes.distill import data_parallel

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
    evaluation on the selection split every ``eval_every``. With N ranks each takes batch_size of
    its ceil(examples / N) per epoch, so an epoch has the steps of one process at N * batch_size."""

    steps_per_epoch: int
    total: int
    warmup: int
    eval_every: int

    @classmethod
    def of(cls, cfg, examples: int, world_size: int = 1) -> "_Schedule":
        steps_per_epoch = math.ceil(math.ceil(examples / world_size) / cfg.batch_size)
        total = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return cls(steps_per_epoch, total, int(cfg.warmup_ratio * total), cfg.eval_every or max(1, math.ceil(total / 4)))


PROBE_STEPS = 3  # timed training steps of distill.time_limit_s's probe (after one warm-up step)
PROBE_EVAL_EXAMPLES = 64  # selection examples its evaluation is timed on


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


def _run_key(state: ModelState, ctx: PassContext, data, selection, world_size: int) -> str:
    """Hash of everything that determines the run: names its resume checkpoint."""
    return json_digest({
        "source": state.source.content_hash, "student": _state_digest(state.torch_model),
        "distill": ctx.recipe.distill.model_dump(mode="json"), "seed": ctx.seed, "max_length": ctx.recipe.max_length,
        "train": data.content_hash(), "selection": selection.content_hash(), "world_size": world_size,
    })[:20]


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every rank needs to run the same distillation (pickled to the other ranks): the
    incoming state (the student's start, its source = the teacher, the tokenizer, annotations),
    the recipe, the task, the training text, and the resume checkpoint rank 0 read (or None)."""

    state: ModelState
    recipe: object
    task: object
    data: object
    resume: dict | None


@dataclasses.dataclass(frozen=True)
class _MainSide:
    """What only rank 0 has: the pass context (progress bar, teacher's score), the selection split
    early stopping scores on, and where resume checkpoints are written."""

    ctx: PassContext
    selection: object
    checkpoint_path: Path


def _read_checkpoint(path: Path) -> dict | None:
    """The resume checkpoint at ``path`` (rank 0 reads it; the job carries it to every rank), or None."""
    import torch

    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over
        logger.warning("distill: cannot read the resume checkpoint %s (%s); starting from step 0", path, err)
        path.unlink(missing_ok=True)
        return None


class _Training:
    """One distillation run on one rank: the models, the optimizer and the loop state a resume
    checkpoint holds. ``session`` is the distributed session (None in a single process); ``main``
    is rank 0's side (None on the other ranks)."""

    def __init__(self, job: _Job, session, main: _MainSide | None):
        import torch

        from mcompress.passes.prune import structured

        self.cfg, self.job, self.session, self.main = job.recipe.distill, job, session, main
        self.rank, self.world_size = (session.world.rank, session.world.size) if session else (0, 1)
        self.task, self.tokenizer, self.data, self.seed = job.task, job.state.tokenizer, job.data, job.recipe.seed
        self.device = data_parallel.rank_device(resolve_device(self.cfg.device))
        torch.manual_seed(self.seed + self.rank)  # each rank its own dropout masks
        self.teacher = _frozen_teacher(job.state.source, self.device)
        self.student = _trainable_student(job.state.torch_model, self.device)
        self.masks = structured.zero_pattern_masks(self.student) if job.state.annotations.get("sparsity") == "2:4" else None
        self.trainee = data_parallel.wrap(self.student, self.device) if session else self.student
        self.sampler = data_parallel.EpochOrder(
            len(self.data), self.world_size, self.rank, self.seed,
            [len(t) for t in self.data.texts] if self.cfg.length_grouped else None, self.cfg.batch_size * self.world_size)
        self.teacher_layers = job.state.annotations.get("kept_layers")
        self.max_length = self.cfg.max_length or job.recipe.max_length
        self.input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                            if n in self.tokenizer.model_input_names]
        self.schedule = _Schedule.of(self.cfg, len(self.data), self.world_size)
        self.probe = None
        if self.cfg.time_limit_s is not None:  # the step count that fits, then the schedule of that count
            self.cfg = self.cfg.model_copy(update={"steps": self._steps_within_time_limit(job)})
            self.schedule = _Schedule.of(self.cfg, len(self.data), self.world_size)
        self.optimizer, self.scheduler = _optimizer(self.student, self.cfg, self.schedule)
        # Everything the loop carries between steps: saved whole in a resume checkpoint.
        self.run = {"step": 0, "best_score": None, "best_step": None, "best_state": None, "stale": 0, "history": [],
                    "losses": [], "planned_steps": self.cfg.steps if self.cfg.time_limit_s is not None else None}
        self.examples, self.saved_step = 0, None
        # False while a step is half applied: an interrupt then saves nothing (the last periodic
        # checkpoint stays). The RNG state is taken at the last step boundary, before dropout draws.
        self.consistent, self.boundary_rng = True, None

    def _steps_within_time_limit(self, job: _Job) -> int:
        """Optimizer steps that fit in ``distill.time_limit_s`` with the evaluations the schedule
        runs, capped at the configured steps (or epochs). A resumed run keeps the count its
        checkpoint planned. Else rank 0 times PROBE_STEPS training steps (after one untimed warm-up
        step) on the student itself, then puts its weights and the RNG back, so the run is the one
        ``distill.steps`` of the count gives; plus one evaluation of PROBE_EVAL_EXAMPLES selection
        examples, scaled to the split. The other ranks receive rank 0's count."""
        import torch

        planned = ((job.resume or {}).get("run") or {}).get("planned_steps")
        if planned is not None:
            return int(planned)
        steps = None
        if self.main is not None:
            weights = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
            rng = self.rng_state()
            optimizer, _ = _optimizer(self.student, self.cfg, self.schedule)
            self.student.train()
            timed = []
            for step in range(PROBE_STEPS + 1):
                feed, labels = self.batch_at(step)
                started = time.perf_counter()
                loss, _, _ = self.loss(feed, labels, student=self.student)  # not the DDP wrapper: rank 0 alone
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                timed.append(time.perf_counter() - started)
            self.student.load_state_dict(weights)
            torch.set_rng_state(rng["cpu"])
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            step_s = float(np.median(timed[1:]))
            sample = self.main.selection.head(PROBE_EVAL_EXAMPLES)
            started = time.perf_counter()
            self.task.evaluate(TorchRunner(self.student), self.tokenizer, sample, job.recipe.max_length,
                               job.recipe.eval.batch_size)
            eval_s = (time.perf_counter() - started) * len(self.main.selection) / max(1, len(sample))
            evaluations = 5  # eval_every = total / 4, and the last step's
            fits = math.floor((self.cfg.time_limit_s - evaluations * eval_s) / step_s)
            steps = max(1, min(self.schedule.total, fits))
            self.probe = {"step_s": round(step_s, 4), "evaluation_s": round(eval_s, 2), "steps_that_fit": max(0, fits)}
            logger.info("distill: %.3f s a step, %.1f s an evaluation: %d steps fit in %.0f s (of %d configured)",
                        step_s, eval_s, max(0, fits), self.cfg.time_limit_s, self.schedule.total)
        return distributed.broadcast(steps) if self.session else steps

    def resume(self, saved: dict) -> int:
        """Continue from a checkpoint (every rank gets rank 0's copy); the step it continues from."""
        import torch

        own = saved["ranks"][self.rank]  # this rank's RNG state and unlogged losses
        rng = own["rng"]
        self.student.load_state_dict(saved["student"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.run, self.saved_step = {**saved["run"], "losses": own["losses"]}, saved["run"]["step"]
        if self.main:
            logger.info("distill: resuming from step %d of %d (%s)", self.run["step"], self.schedule.total,
                        self.main.checkpoint_path)
        return self.run["step"]

    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state and the losses it has not
        logged yet (gathered at this boundary)."""
        import torch

        own = {"rng": self.boundary_rng, "losses": list(self.run["losses"])}
        ranks = distributed.gather(own) if self.session else [own]
        self.saved_step = self.run["step"]
        if self.main is None:
            return
        path = self.main.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "ranks": ranks,
                    "run": {k: v for k, v in self.run.items() if k != "losses"}}, tmp)
        tmp.replace(path)

    def rng_state(self) -> dict:
        """The generators dropout draws from: the CPU's, and the GPU's when training there."""
        import torch

        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def batch_at(self, step: int):
        """This rank's share of the batch of ``step``: its epoch's seeded order, sharded by a
        DistributedSampler (data_parallel.EpochOrder), so a resumed run sees the same data."""
        import torch

        epoch, position = divmod(step, self.schedule.steps_per_epoch)
        shard = self.sampler.indices(epoch)
        idx = shard[position * self.cfg.batch_size:(position + 1) * self.cfg.batch_size]
        inputs, targets = self.task.training_batch(self.tokenizer, self.data, idx, self.max_length)
        return ({n: torch.from_numpy(inputs[n]).to(self.device) for n in self.input_names},
                None if targets is None else torch.from_numpy(targets).to(self.device))

    def selection_score(self) -> tuple[float, float]:
        """(the task's score, its selection loss: Task.selection_loss) of the student on the
        selection split (rank 0)."""
        recipe = self.job.recipe
        result = self.task.evaluate(TorchRunner(self.student), self.tokenizer, self.main.selection, recipe.max_length,
                                    recipe.eval.batch_size)
        return result.score, self.task.selection_loss(result)

    def loss(self, feed, batch_labels, student=None):
        """(total, kl, ce) of the student (default: the trainee, DDP-wrapped under a launcher)
        against the teacher on one batch (module docstring)."""
        import torch

        cfg, use_hidden = self.cfg, self.cfg.hidden_weight > 0
        with torch.no_grad():
            t_out = self.teacher(**feed, output_hidden_states=use_hidden)
        s_out = (student or self.trainee)(**feed, output_hidden_states=use_hidden)
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
        """One optimizer step on the next batch (the 2:4 pattern re-applied after it). Under DDP
        the backward pass averages the gradients of all ranks."""
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

    def mean_losses(self) -> list[float] | None:
        """(loss, kl, ce) over the steps since the last evaluation, averaged over the ranks (equal
        shares of each batch), on rank 0; None on the others."""
        losses = self.run["losses"]
        mean = np.mean(losses, axis=0).tolist() if losses else [float("nan")] * 3
        losses.clear()
        if self.session is None:
            return mean
        means = distributed.gather(mean)
        return np.mean(means, axis=0).tolist() if self.main else None

    def evaluate(self, step: int, mean: list[float]) -> bool:
        """Rank 0: score the selection split, keep the weights if they are the best so far, log
        the figures (``mean``: the training losses since the last evaluation); whether patience
        has run out."""
        run = self.run
        accuracy, sel_ce = self.selection_score()
        self.student.train()
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
        ctx = self.main.ctx  # this runs on rank 0 only, which holds the pass context
        if ctx.on_progress:
            ctx.on_progress("distill", {"step": step, "total_steps": self.schedule.total, "selection_score": accuracy,
                                        "reference_selection_score": ctx.reference_selection_score})
        logger.info("distill step %d/%d: loss %.4f (KL·T² %.4f, CE %.4f), selection accuracy %.4f "
                    "(best %.4f at step %d; teacher %.4f)", step, self.schedule.total, mean[0], mean[1], mean[2],
                    accuracy, run["best_score"][0], run["best_step"], self.main.ctx.reference_selection_score)
        return run["stale"] >= self.cfg.patience

    def should_stop(self, step: int) -> bool:
        """Early stopping, decided once on rank 0 and broadcast to every rank."""
        if step % self.schedule.eval_every and step != self.schedule.total:
            return False
        mean = self.mean_losses()
        stop = self.evaluate(step, mean) if self.main else None
        return distributed.broadcast(stop) if self.session else stop

    def loop(self) -> None:
        """Steps, evaluations and periodic checkpoints until the schedule ends or patience runs out."""
        cfg, total = self.cfg, self.schedule.total
        progress = self.main.ctx.progress if self.main else None
        advance = progress("distilling", total) if progress else (lambda n: None)
        advance(self.run["step"])
        while self.run["step"] < total:
            self.train_step()
            step = self.run["step"]
            if self.should_stop(step):
                logger.info("distill: early stop at step %d, no improvement in %d evaluations", step, cfg.patience)
                break
            # The step and its evaluation are complete: a resume may start here.
            self.consistent, self.boundary_rng = True, self.rng_state()
            advance(1)
            if step % cfg.checkpoint_every == 0 and step < total:
                self.save_checkpoint()

    def train(self) -> float:
        """Train until the schedule ends or patience runs out; the seconds it took. Ctrl-C saves a
        resume checkpoint when it lands between steps (one process); under a launcher a lost rank or
        a stop raises RankLost and the last periodic checkpoint is what a rerun resumes from."""
        started, self.examples = time.perf_counter(), 0
        self.consistent, self.boundary_rng = True, self.rng_state()
        self.student.train()
        try:
            self.loop()
        except KeyboardInterrupt as err:
            if self.session and self.main:  # the other ranks leave quietly (engines/distributed.serve)
                raise self.rank_lost("the launcher stopped this rank (another rank failed, or Ctrl-C)") from err
            if self.session:
                raise
            if self.consistent:
                self.save_checkpoint()
                logger.warning("distill interrupted at step %d; resume state saved to %s", self.run["step"],
                               self.main.checkpoint_path)
            raise
        except Exception as err:
            if self.session and distributed.is_collective_failure(err):
                raise self.rank_lost(f"a collective failed ({distributed.failure_reason(err)}): a rank died or hung") from err
            raise
        return time.perf_counter() - started

    def rank_lost(self, why: str) -> distributed.RankLost:
        if self.saved_step is not None:
            then = f"rerun the same command to resume from step {self.saved_step} (the last checkpoint)."
        else:
            then = "no checkpoint was written yet (distill.checkpoint_every); a rerun starts distillation over."
        return distributed.RankLost(f"distributed distillation stopped at step {self.run['step']} of {self.schedule.total} "
                                    f"on rank {self.rank} of {self.world_size}: {why}. No build was written;", then)

    def metrics(self, resumed_from: int | None, elapsed: float) -> dict:
        cfg, run, data, total = self.cfg, self.run, self.data, self.schedule.total
        examples = self.examples * self.world_size  # every rank trains on an equal share
        return {
            "steps": run["step"], "total_steps": total, "epochs": round(run["step"] / self.schedule.steps_per_epoch, 3),
            "train_examples": len(data), "train_labels": "given" if data.labels is not None else "teacher argmax",
            "batch_size": cfg.batch_size, "global_batch_size": cfg.batch_size * self.world_size,
            "world_size": self.world_size, "backend": self.session.device_backend(self.device) if self.session else None,
            "max_length": self.max_length, "length_grouped": cfg.length_grouped, "temperature": cfg.temperature,
            "alpha": cfg.alpha, "hidden_weight": cfg.hidden_weight, "device": str(self.device),
            "best_step": run["best_step"], "selection_accuracy": round(run["best_score"][0], 4),
            "teacher_selection_accuracy": round(self.main.ctx.reference_selection_score, 4),
            "early_stopped": run["step"] < total, "resumed_from_step": resumed_from,
            "train_s": round(elapsed, 1), "examples_per_s": round(examples / elapsed, 1) if elapsed > 0 else None,
            "time_limit_s": cfg.time_limit_s, "planned_steps": run.get("planned_steps"), "probe": self.probe,
            "history": run["history"],
        }


def _start_training(job: _Job, session, main: _MainSide | None) -> tuple[_Training, int | None]:
    """The run on this rank, continued from the job's checkpoint when it has one; (training, the
    step it resumed from). A checkpoint that does not load (another code version's) starts over, on
    every rank alike, since every rank got the same checkpoint."""
    training = _Training(job, session, main)
    if job.resume is None:
        return training, None
    try:
        return training, training.resume(job.resume)
    except Exception as err:
        logger.warning("distill: cannot resume from the checkpoint (%s); starting from step 0", err)
        if main:
            main.checkpoint_path.unlink(missing_ok=True)
        return _Training(dataclasses.replace(job, resume=None), session, main), None


def _train_on_rank(job: _Job) -> None:
    """Ranks > 0 (announced by rank 0, engines/distributed.section): this rank's share of the run."""
    training, _ = _start_training(job, distributed.active(), None)
    training.train()


class Distill(Pass):
    name = "distill"
    target_independent = True  # PyTorch in, PyTorch out: no target setting is read
    accepts = (ModelKind.TORCH,)
    produces = ModelKind.TORCH

    def cache_key_parts(self, ctx: PassContext) -> dict:
        # The teacher is the source checkpoint, which roots the cache's key chain. The world size
        # is part of the result: N ranks train with a global batch of N * batch_size.
        cfg, session = ctx.recipe.distill, distributed.active()
        return {"distill": cfg.model_dump(mode="json"), "max_length": ctx.recipe.max_length, "seed": ctx.seed,
                "train": ctx.calibration.head(cfg.train_examples).content_hash(),
                "selection": ctx.selection.head(cfg.eval_examples).content_hash(),
                "world_size": session.world.size if session else 1}

    def call(self, state: ModelState, ctx: PassContext) -> PassResult:
        cfg, session = ctx.recipe.distill, distributed.active()
        data = ctx.calibration.head(cfg.train_examples)
        if len(data) == 0:
            raise ValueError("no training text")
        selection = ctx.selection.head(cfg.eval_examples)
        world_size = session.world.size if session else 1
        checkpoint_path = resume_dir(ctx) / f"distill-{_run_key(state, ctx, data, selection, world_size)}.pt"
        job = _Job(state, ctx.recipe, ctx.task, data, _read_checkpoint(checkpoint_path))
        main = _MainSide(ctx, selection, checkpoint_path)
        if session is None:
            return self._finish(state, *self._train(job, None, main))
        with distributed.section(_train_on_rank, job):
            return self._finish(state, *self._train(job, session, main))

    @staticmethod
    def _train(job: _Job, session, main: _MainSide) -> tuple[_Training, dict]:
        training, resumed_from = _start_training(job, session, main)
        elapsed = training.train()
        return training, training.metrics(resumed_from, elapsed)

    @staticmethod
    def _finish(state: ModelState, training: _Training, metrics: dict) -> PassResult:
        student = training.student
        student.load_state_dict(training.run["best_state"])
        student.cpu().eval()
        training.main.checkpoint_path.unlink(missing_ok=True)
        return PassResult(dataclasses.replace(state, torch_model=student), True, metrics)
