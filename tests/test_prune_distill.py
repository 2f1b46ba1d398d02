"""Structured pruning and distillation on the tiny checkpoint (2 layers, 2 heads of 16, FFN 64):
removing heads/neurons is the same function as zeroing them, the smaller model saves, reloads and
exports, distillation moves the student towards the teacher and resumes, and bad budgets fail
before any work."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mcompress.calibration.datasets import LabelledTexts, tokenize
from mcompress.cli import app
from mcompress.core.errors import ExitCode, InputError
from mcompress.metrics.flops import encoder_flops
from mcompress.core.pass_base import PassContext
from mcompress.core.task import get_task
from mcompress.passes.distill.kd import Distill
from mcompress.passes.export.onnx_export import ExportOnnx
from mcompress.passes.optimize.transformer_fusion import FuseTransformer
from mcompress.passes.prune import structured as S
from mcompress.core.recipe import load_recipe
from mcompress.core.state import ModelKind, ModelState
from mcompress.targets import get_target

EQUAL_ATOL = 1e-5  # |logit| difference, pruned vs zeroed (same function, different summation order)
ONNX_ATOL = 1e-4  # |logit| difference, ONNX Runtime FP32 vs PyTorch FP32
HEAD_SIZE = 16
CLASSIFIER = get_task("text-classification")  # the tiny model's task: its pruning hooks


def _context(setup, work_dir: Path, **overrides) -> PassContext:
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(setup["recipe"].with_overrides(**overrides), get_target("onnx-cpu"), work_dir,
                       setup["train"], setup["validation"], 1.0)


def _state(setup, model=None) -> ModelState:
    return ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=model or setup["model"])


def _batch(setup, n: int = 7) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in tokenize(setup["tokenizer"], setup["test"].texts[:n], 32).items()}


def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(**batch).logits


def test_head_removal_equals_zeroing_those_heads(setup):
    keep = [[0], [1]]  # a different head in each layer
    pruned, zeroed = copy.deepcopy(setup["model"]), copy.deepcopy(setup["model"])
    S.prune_heads(pruned, keep)
    for layer, kept in zip(zeroed.bert.encoder.layer, keep):
        for h in range(2):
            if h not in kept:  # the attention output projection reads nothing from this head
                layer.attention.output.dense.weight.data[:, h * HEAD_SIZE:(h + 1) * HEAD_SIZE] = 0
    assert S.heads_per_layer(pruned) == [1, 1]
    assert pruned.config.pruned_heads == {0: [1], 1: [0]}
    attn = pruned.bert.encoder.layer[0].attention
    assert attn.self.query.weight.shape == (HEAD_SIZE, 32) and attn.output.dense.weight.shape == (32, HEAD_SIZE)
    batch = _batch(setup)
    assert torch.allclose(_logits(pruned, batch), _logits(zeroed, batch), atol=EQUAL_ATOL)
    assert not torch.allclose(_logits(pruned, batch), _logits(setup["model"], batch), atol=EQUAL_ATOL)


def test_neuron_removal_equals_zeroing_those_neurons(setup):
    rng = np.random.default_rng(0)
    keep = [sorted(rng.choice(64, 40, replace=False).tolist()) for _ in range(2)]
    pruned, zeroed = copy.deepcopy(setup["model"]), copy.deepcopy(setup["model"])
    S.prune_ffn(pruned, keep)
    for layer, kept in zip(zeroed.bert.encoder.layer, keep):
        dropped = [j for j in range(64) if j not in kept]
        layer.output.dense.weight.data[:, dropped] = 0
    assert S.ffn_sizes(pruned) == [40, 40] and pruned.config.intermediate_size == 40
    layer = pruned.bert.encoder.layer[1]
    assert layer.intermediate.dense.weight.shape == (40, 32) and layer.output.dense.weight.shape == (32, 40)
    batch = _batch(setup)
    assert torch.allclose(_logits(pruned, batch), _logits(zeroed, batch), atol=EQUAL_ATOL)
    with pytest.raises(ValueError, match="same FFN width"):
        S.prune_ffn(copy.deepcopy(setup["model"]), [keep[0], keep[1][:30]])


def test_importance_comes_from_data(setup):
    """A head or neuron whose output is already cut off has zero gradient: it is pruned first."""
    model = copy.deepcopy(setup["model"])
    model.bert.encoder.layer[0].attention.output.dense.weight.data[:, :HEAD_SIZE] = 0  # head 0 of layer 0
    model.bert.encoder.layer[1].output.dense.weight.data[:, 5] = 0  # neuron 5 of layer 1
    batches, labels = S.scoring_batches(setup["tokenizer"], setup["train"], 32, 8, CLASSIFIER)
    heads, neurons = S.importance_scores(model, batches, labels, CLASSIFIER)
    assert heads[0][0] == 0 and heads[0][1] > 0 and (heads[1] > 0).all()
    assert neurons[1][5] == 0 and (neurons[1] > 0).sum() >= 60
    assert S.choose_heads(heads, keep_per_layer=1)[0] == [1]
    assert 5 not in S.choose_neurons(neurons, 63)[1]
    # Without labels the model's own argmax is the target: still a usable ranking.
    heads_unlabelled, _ = S.importance_scores(model, batches, None, CLASSIFIER)
    assert heads_unlabelled[0][0] == 0 and heads_unlabelled[0][1] > 0
    # The scored model is left as it was: no hooks, gradients or mode changes.
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_choose_heads_global_ratio_keeps_one_head_per_layer():
    scores = [torch.tensor([5.0, 4.0, 3.0, 2.0]), torch.tensor([0.1, 0.0, 0.0, 0.0])]
    assert S.choose_heads(scores, keep_ratio=0.25) == [[0], [0]]  # 2 of 8, at least one per layer
    assert S.choose_heads(scores, keep_ratio=0.5) == [[0, 1, 2], [0]]  # normalised within each layer


@pytest.fixture(scope="module")
def pruned(setup, tmp_path_factory):
    """The prune pass with a global ratio: 3 of 4 heads (1 and 2 per layer) and FFN 48 of 64."""
    ctx = _context(setup, tmp_path_factory.mktemp("prune"), **{"prune.keep_ratio": 0.75})
    return S.PruneStructured().call(_state(setup), ctx)


def test_prune_pass_budget_metrics_and_reference_untouched(setup, pruned):
    model = pruned.state.torch_model
    m = pruned.metrics
    assert pruned.modified and pruned.state.kind is ModelKind.TORCH
    assert sorted(m["heads_per_layer"]) == [1, 2] and m["head_ranking"] == "global"
    assert m["ffn_size"] == 48 and S.ffn_sizes(model) == [48, 48]
    assert m["params_after"] < m["params_before"]
    assert m["flops_seq128_after"] < m["flops_seq128_before"] == encoder_flops(setup["model"])
    assert m["importance_examples"] == len(setup["train"]) and m["importance_loss"] == "cross-entropy vs labels"
    assert S.heads_per_layer(setup["model"]) == [2, 2] and setup["model"].config.pruned_heads == {}


def test_prune_pass_counts_budget(setup, tmp_path):
    ctx = _context(setup, tmp_path, **{"prune.heads_per_layer": 1, "prune.ffn_neurons_per_layer": 16})
    result = S.PruneStructured().call(_state(setup), ctx)
    assert result.metrics["heads_per_layer"] == [1, 1] and result.metrics["ffn_size"] == 16
    assert result.metrics["head_ranking"] == "per_layer"


def test_flops_count(setup):
    # hidden 32, FFN 64, 2 layers, seq 128; pooler and classifier once per sequence.
    per_layer = 128 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 128 * 128 * 32
    assert encoder_flops(setup["model"], 128) == 2 * (2 * per_layer + 32 * 32 + 32 * 2)


def test_pruned_model_saves_and_reloads(setup, pruned, tmp_path):
    from transformers import AutoModelForSequenceClassification

    pruned.state.torch_model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["intermediate_size"] == 48 and sum(len(v) for v in config["pruned_heads"].values()) == 1
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert S.heads_per_layer(reloaded) == S.heads_per_layer(pruned.state.torch_model)
    batch = _batch(setup)
    assert torch.equal(_logits(reloaded, batch), _logits(pruned.state.torch_model, batch))


def test_pruned_model_exports_and_fuses(setup, pruned, tmp_path):
    """Non-uniform heads (1 and 2) through export (own parity check) and ORT fusion."""
    import onnxruntime as ort

    exported = ExportOnnx().call(pruned.state, _context(setup, tmp_path / "export"))
    fused = FuseTransformer().call(exported.state, _context(setup, tmp_path / "fuse", **{"optimize.fusion": "fused"}))
    assert fused.metrics["fused_operators"].get("Attention") == 2
    batch = tokenize(setup["tokenizer"], setup["test"].texts[:7], 24)
    expected = _logits(pruned.state.torch_model, {k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    for path in (exported.state.onnx_path, fused.state.onnx_path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})[0]
        assert np.abs(got - expected).max() <= ONNX_ATOL


def _make_layer_identity(model, index: int) -> None:
    """Zero layer ``index``'s attention and FFN outputs and reset its LayerNorms: with post-LN and
    LayerNorm-ed inputs, the layer then passes its input on unchanged (up to LayerNorm epsilon)."""
    layer = model.bert.encoder.layer[index]
    with torch.no_grad():
        for linear in (layer.attention.output.dense, layer.output.dense):
            linear.weight.zero_()
            linear.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()


def test_layer_ablation_measures_the_loss_without_each_layer(setup):
    model = copy.deepcopy(setup["model"])
    _make_layer_identity(model, 1)
    batches, labels = S.scoring_batches(setup["tokenizer"], setup["train"], 32, 8, CLASSIFIER)
    full_loss = S._mean_loss(model.eval(), batches, labels, CLASSIFIER)
    kept, rounds = S.choose_layers(model, batches, labels, keep=1, task=CLASSIFIER)
    losses = rounds[0]["loss_without"]
    assert abs(losses["1"] - full_loss) < 2e-4  # skipping the identity layer changes nothing (log rounds to 1e-4)
    assert abs(losses["0"] - full_loss) > 1e-3  # skipping a real layer does
    assert kept == [0 if losses["1"] <= losses["0"] else 1] and rounds[0]["dropped"] != kept[0]
    assert len(model.bert.encoder.layer) == 2  # measuring leaves the model whole


def test_prune_pass_drops_layers_and_the_model_reloads_and_exports(setup, tmp_path):
    from transformers import AutoModelForSequenceClassification

    ctx = _context(setup, tmp_path / "work", **{"prune.keep_layers": 1, "prune.heads_per_layer": 1})
    result = S.PruneStructured().call(_state(setup), ctx)
    model, m = result.state.torch_model, result.metrics
    assert result.modified and m["layers"] == 1 and m["layers_before"] == 2 and len(m["layer_ablation"]) == 1
    kept = result.state.annotations["kept_layers"]
    assert kept == m["kept_layers"] and len(kept) == 1 and kept[0] != m["layer_ablation"][0]["dropped"]
    assert model.config.num_hidden_layers == 1 and S.heads_per_layer(model) == [1]
    assert set(model.config.pruned_heads) == {0}  # re-indexed to the kept layer's new position
    assert len(setup["model"].bert.encoder.layer) == 2  # the reference is untouched
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    batch = _batch(setup)
    assert torch.equal(_logits(reloaded, batch), _logits(model, batch))
    exported = ExportOnnx().call(result.state, _context(setup, tmp_path / "export"))  # checks its own parity
    assert exported.state.annotations["config_updates"]["num_hidden_layers"] == 1


def test_hidden_state_matching_pairs_kept_layers_with_their_teacher_layers():
    from mcompress.passes.distill.kd import hidden_state_loss

    teacher = tuple(torch.full((2, 3, 4), float(i)) for i in range(4))  # embeddings + 3 layers
    student = (teacher[0], teacher[1], teacher[3])  # student kept teacher layers 0 and 2 (0-based)
    mask = torch.ones(2, 3, dtype=torch.long)
    assert float(hidden_state_loss(student, teacher, mask, "all", teacher_layers=[0, 2])) == 0.0
    assert float(hidden_state_loss(student, teacher, mask, "cls")) > 0  # without the map: 1->2, 2->3


def _kl_to_teacher(student, teacher, batch, temperature: float = 2.0) -> float:
    import torch.nn.functional as F

    s, t = _logits(student, batch), _logits(teacher, batch)
    return float(F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                          reduction="batchmean", log_target=True))


DISTILL = {"distill.steps": 12, "distill.batch_size": 8, "distill.lr": 3e-3, "distill.eval_every": 4,
           "distill.patience": 10, "distill.warmup_ratio": 0.0}


def test_distillation_lowers_kl_to_teacher(setup, tmp_path):
    student = copy.deepcopy(setup["model"])
    S.prune_heads(student, [[0], [1]])
    S.prune_ffn(student, [list(range(16))] * 2)
    torch.manual_seed(1)
    student.classifier.reset_parameters()  # far from the teacher, so the KL has room to fall
    batch = _batch(setup, 16)
    before = _kl_to_teacher(student, setup["model"], batch)
    result = Distill().call(_state(setup, student), _context(setup, tmp_path, **DISTILL, **{"distill.alpha": 1.0}))
    after = _kl_to_teacher(result.state.torch_model, setup["model"], batch)
    assert after < before / 2, (before, after)
    m = result.metrics
    assert m["steps"] == 12 and m["train_labels"] == "given" and len(m["history"]) == 3
    assert m["best_step"] in (4, 8, 12) and not result.state.torch_model.training
    assert S.heads_per_layer(student) == [1, 1]  # the incoming model is not trained in place


def test_distillation_with_hidden_states_and_unlabelled_text(setup, tmp_path):
    ctx = _context(setup, tmp_path, **{**DISTILL, "distill.steps": 2, "distill.hidden_weight": 1.0,
                                       "distill.hidden_tokens": "all"})
    ctx.calibration = LabelledTexts(setup["train"].texts, None, "unlabelled")
    result = Distill().call(_state(setup, copy.deepcopy(setup["model"])), ctx)
    assert result.metrics["train_labels"] == "teacher argmax" and result.metrics["steps"] == 2


def test_a_time_limit_trains_the_steps_that_fit_and_equals_that_many_given_steps(setup, tmp_path):
    """distill.time_limit_s: the pass times its steps, trains the count that fits (capped at the
    configured steps), reports it, and the run equals an explicit distill.steps of that count
    (the probe puts the weights and the RNG back)."""
    def run(**overrides):
        ctx = _context(setup, tmp_path / str(len(list(tmp_path.iterdir()))), **{**DISTILL, "distill.eval_every": None,
                                                                                  **overrides})
        return Distill().call(_state(setup, copy.deepcopy(setup["model"])), ctx)

    roomy = run(**{"distill.time_limit_s": 3600.0})
    m = roomy.metrics
    assert m["planned_steps"] == m["steps"] == 12 and m["time_limit_s"] == 3600.0  # the cap: distill.steps
    assert m["probe"]["step_s"] > 0 and m["probe"]["steps_that_fit"] > 12
    # a limit below one step's cost still trains one step, and says how many fit
    tight = run(**{"distill.time_limit_s": m["probe"]["step_s"] / 10})
    assert tight.metrics["planned_steps"] == tight.metrics["steps"] == 1 and tight.metrics["probe"]["steps_that_fit"] == 0
    # a limit that fits some steps: the same model as that many steps given outright
    some = run(**{"distill.time_limit_s": 5 * m["probe"]["evaluation_s"] + 4.5 * m["probe"]["step_s"]})
    planned = some.metrics["planned_steps"]
    assert 1 <= planned < 12, some.metrics["probe"]
    given = run(**{"distill.steps": planned})
    assert given.metrics["planned_steps"] is None and given.metrics["history"] == some.metrics["history"]
    for (name, a), b in zip(given.state.torch_model.state_dict().items(), some.state.torch_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("world_size, batch", [(1, 8), (2, 4), (3, 3)])
def test_length_grouped_order_keeps_the_data_parallel_batches_and_pads_less(world_size, batch):
    """distill.length_grouped: every example once an epoch (plus the sampler's padding), the N
    ranks' batch k together are one process's batch k at N x b (for a training size that is a
    multiple of N x b, as without grouping), and batches hold similar lengths."""
    import random

    from mcompress.passes.distill.data_parallel import EpochOrder

    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(288)]
    global_batch = world_size * batch
    one = EpochOrder(len(lengths), 1, 0, seed=7, lengths=lengths, global_batch=global_batch).indices(2)
    ranks = [EpochOrder(len(lengths), world_size, r, seed=7, lengths=lengths, global_batch=global_batch).indices(2)
             for r in range(world_size)]
    assert sorted(set(one)) == list(range(len(lengths))) and len(one) == len(lengths)
    for k in range(len(ranks[0]) // batch):
        together = sorted(i for shard in ranks for i in shard[k * batch:(k + 1) * batch])
        assert together == sorted(one[k * global_batch:(k + 1) * global_batch]), k
    shuffled = EpochOrder(len(lengths), 1, 0, seed=7).indices(2)

    def padded(order):  # the mean longest text per batch, which a batch pads to
        return sum(max(lengths[i] for i in order[k:k + global_batch]) for k in range(0, len(order), global_batch))

    assert padded(one) < 0.8 * padded(shuffled)
    assert one != EpochOrder(len(lengths), 1, 0, seed=7, lengths=lengths, global_batch=global_batch).indices(3)


class _Interrupt:
    """A progress hook that presses Ctrl-C after ``at`` training steps."""

    def __init__(self, at: int):
        self.at, self.done = at, 0

    def __call__(self, description, total):
        def advance(n):
            self.done += n
            if self.at is not None and self.done >= self.at:
                raise KeyboardInterrupt
        return advance


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_distillation_resumes_where_it_was_interrupted(setup, tmp_path, device):
    def run(progress, resume):
        ctx = _context(setup, tmp_path / "work", **{**DISTILL, "distill.steps": 8, "distill.checkpoint_every": 3,
                                                    "distill.device": device})
        ctx.progress, ctx.resume_dir = progress, resume
        return Distill().call(_state(setup, copy.deepcopy(setup["model"])), ctx)

    straight = run(None, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(_Interrupt(5), tmp_path / "resume")
    assert len(list((tmp_path / "resume").glob("distill-*.pt"))) == 1
    resumed = run(_Interrupt(None), tmp_path / "resume")
    assert resumed.metrics["resumed_from_step"] == 5 and resumed.metrics["steps"] == 8
    assert resumed.metrics["device"].startswith(device)
    assert not list((tmp_path / "resume").glob("distill-*.pt"))  # removed once finished
    # Exact on the CPU; on a GPU to rounding (CUDA's embedding backward accumulates with atomics).
    atol = 1e-6 if device == "cpu" else 1e-4
    for (name, a), b in zip(straight.state.torch_model.state_dict().items(), resumed.state.torch_model.state_dict().values()):
        assert torch.allclose(a, b, atol=atol), name
    if device == "cpu":
        assert straight.metrics["history"] == resumed.metrics["history"]


def test_semi_structured_2_4_survives_distillation(setup, tmp_path):
    ctx = _context(setup, tmp_path, **{"prune.heads_per_layer": 1, "prune.semi_structured_2_4": True, **DISTILL,
                                       "distill.steps": 3})
    result = S.PruneStructured().call(_state(setup), ctx)
    assert result.state.annotations["sparsity"] == "2:4" and result.metrics["sparsity"] == "2:4"
    distilled = Distill().call(result.state, ctx)
    for model in (result.state.torch_model, distilled.state.torch_model):
        for layer in model.bert.encoder.layer:
            for linear in (layer.attention.self.query, layer.intermediate.dense, layer.output.dense):
                groups = (linear.weight.detach().reshape(linear.out_features, -1, 4) != 0).sum(-1)
                assert groups.max() <= 2


# --- recipe validation: before any work -------------------------------------------------------------------

def _write_recipe(tmp_path: Path, fast_recipe: Path, extra: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(fast_recipe.read_text() + extra)
    return path


@pytest.mark.parametrize("extra, message", [
    ("prune:\n  keep_ratio: 0\n", "greater than 0"),
    ("prune:\n  keep_ratio: 1.5\n", "less than or equal to 1"),
    ("prune:\n  heads_per_layer: 0\n", "greater than or equal to 1"),
    ("prune:\n  keep_layers: 0\n", "greater than or equal to 1"),
    ("distill:\n  device: tpu\n", "'auto', 'cpu' or 'cuda'"),
    ("prune:\n  keep_ratio: 0.5\n  heads_per_layer: 1\n", "not both"),
    ("prune:\n  importance_examples: 10\n", "no budget"),
    ("prune:\n  keep_ratio: 0.5\n  typo: 1\n", "unknown key 'prune.typo'"),
    ("distill:\n  steps: 0\n", "greater than or equal to 1"),
    ("distill:\n  epochs: 0\n", "greater than 0"),
])
def test_bad_recipe_values_fail_on_load(tmp_path, fast_recipe, extra, message):
    with pytest.raises(InputError, match=message):
        load_recipe(_write_recipe(tmp_path, fast_recipe, extra))


def _run_cli(model: Path, out: Path, recipe: Path, *extra: str):
    result = CliRunner().invoke(app, ["run", str(model), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe), *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.mark.parametrize("extra, message", [
    ("prune:\n  heads_per_layer: 3\n", "more than the model's 2 attention heads"),
    ("prune:\n  ffn_neurons_per_layer: 65\n", "more than the model's FFN size 64"),
    ("prune:\n  keep_layers: 3\n", "more than the model's 2 layers"),
    ("distill:\n  max_length: 1000\n", "exceeds the model's max_position_embeddings 512"),
])
def test_model_dependent_budget_fails_before_work(tmp_path, tiny_checkpoint, fast_recipe, monkeypatch, extra, message):
    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    code, output = _run_cli(tiny_checkpoint, tmp_path / "out", _write_recipe(tmp_path, fast_recipe, extra))
    assert code == ExitCode.BAD_INPUT and message in " ".join(output.split()), output
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present here")
def test_distill_on_cuda_without_a_gpu_fails_before_work(tmp_path, tiny_checkpoint, fast_recipe, monkeypatch):
    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    extra = "prune:\n  heads_per_layer: 1\ndistill:\n  steps: 1\n  device: cuda\n"
    code, output = _run_cli(tiny_checkpoint, tmp_path / "out", _write_recipe(tmp_path, fast_recipe, extra))
    assert code == ExitCode.BAD_INPUT and "distill.device is cuda, but torch sees no CUDA GPU" in " ".join(output.split())
    assert not (tmp_path / "out").exists()


def test_distill_without_training_text_fails_before_work(tmp_path, checkpoint_copy, fast_recipe, monkeypatch):
    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    model = checkpoint_copy()
    (model / "splits" / "train.jsonl").unlink()  # calibration would fall back to the eval texts
    code, output = _run_cli(model, tmp_path / "out", _write_recipe(tmp_path, fast_recipe, "distill:\n  steps: 2\n"))
    assert code == ExitCode.BAD_INPUT and "distill needs training text" in " ".join(output.split()), output
    assert not (tmp_path / "out").exists()


PRUNE_DISTILL = """\
prune:
  heads_per_layer: 1
  ffn_neurons_per_layer: 32
  importance_examples: 16
  batch_size: 8
distill:
  steps: 6
  batch_size: 8
  lr: 2.0e-3
  eval_every: 3
gates:
  max_drop: 100
"""


@pytest.mark.slow
def test_prune_distill_quantize_end_to_end(tmp_path, tiny_checkpoint, fast_recipe, monkeypatch):
    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, model)
    recipe = _write_recipe(tmp_path, fast_recipe, PRUNE_DISTILL)
    code, output = _run_cli(model, tmp_path / "build", recipe)
    assert code == ExitCode.OK, output
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    names = [p["name"] for p in report["passes"]]
    assert names == ["prune", "distill", "export", "optimize", "quantize"]
    flops = [report["reference"]["flops_seq128"]] + [p["flops_seq128"] for p in report["passes"]]
    assert flops[1] < flops[0] and all(later <= earlier for earlier, later in zip(flops, flops[1:]))
    prune = report["passes"][0]["metrics"]
    assert prune["heads_per_layer"] == [1, 1] and prune["ffn_size"] == 32
    assert report["passes"][1]["metrics"]["steps"] == 6
    assert all(p["accuracy"] is not None for p in report["passes"] if p["modified"])
    markdown = (tmp_path / "build" / "report.md").read_text()
    assert "GFLOPs (seq 128)" in markdown and "| prune |" in markdown and "| distill |" in markdown


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_other_families_prune_save_and_reload(model_type, tmp_path):
    """RoBERTa and DistilBERT keep their pieces elsewhere (DistilBERT: ffn.lin1/lin2, hidden_dim)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    sizes = ({"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64} if model_type == "distilbert" else
             {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64})
    config = AutoConfig.for_model(model_type, vocab_size=100, max_position_embeddings=64, num_labels=2, **sizes)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    flops_before = encoder_flops(model)
    ids = torch.randint(5, 100, (4, 12))
    batch = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
    heads, neurons = S.importance_scores(model, [batch], None, CLASSIFIER)
    assert [len(h) for h in heads] == [4, 4] and [len(n) for n in neurons] == [64, 64]
    S.prune_heads(model, S.choose_heads(heads, keep_ratio=0.5))
    S.prune_ffn(model, S.choose_neurons(neurons, 24))
    assert sum(S.heads_per_layer(model)) == 4 and S.ffn_sizes(model) == [24, 24]
    kept_heads = S.heads_per_layer(model)[1]
    S.drop_layers(model, [1])  # the config's layer count and pruned_heads follow
    assert S.heads_per_layer(model) == [kept_heads] and S.ffn_sizes(model) == [24]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    feed = {k: torch.from_numpy(v) for k, v in batch.items()}
    assert torch.equal(_logits(reloaded, feed), _logits(model, feed))
    assert encoder_flops(reloaded) < flops_before
