"""`onnxdepth heal`: a pruned tiny Llama distilled from its unpruned export through the PyTorch sidecar, the
trained weights written back into the same graph (verified), with LoRA, the best checkpoint, Ctrl-C and
--resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("onnx2torch")
torch = pytest.importorskip("torch")

from onnxdepth import api  # noqa: E402
from onnxdepth.config import PruneConfig  # noqa: E402
from onnxdepth.errors import InvalidArgumentError  # noqa: E402
from onnxdepth.export.hf import export_hf  # noqa: E402
from onnxdepth.graph.io import load_model  # noqa: E402
from onnxdepth.heal import HealConfig, heal_file  # noqa: E402
from onnxdepth.heal.student import Student, trainable_roles  # noqa: E402
from onnxdepth.runtime import open_session  # noqa: E402

from tiny_hf import decoder_feed, save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(teacher path, pruned path, calibration .npz): a 4-layer tiny Llama with past, pruned at 0.3."""
    root = tmp_path_factory.mktemp("heal")
    teacher = export_hf(save_tiny_llama(root / "hf", layers=4), root / "onnx", task="text-generation-with-past")
    pruned = root / "pruned.onnx"
    api.prune_file(teacher, pruned, PruneConfig(0.3, importance="magnitude"))
    calib = root / "calib.npz"
    np.savez(calib, input_ids=np.random.default_rng(0).integers(0, 128, (48, 24)))
    return teacher, pruned, calib


def _config(calib, **changes):
    options = dict(steps=24, eval_every=8, held_out=4, seq_len=24, batch=4, lr=3e-3, warmup=2,
                   calib=None if calib is None else str(calib))
    return HealConfig(**{**options, **changes})


def _logits(path_or_model, ids):
    session = open_session(path_or_model if not hasattr(path_or_model, "SerializeToString") else path_or_model)
    names = {i.name: i for i in session.get_inputs()}
    feeds = decoder_feed(ids)
    for name, spec in names.items():
        if name.startswith("past_key_values"):
            feeds[name] = np.zeros((ids.shape[0], spec.shape[1], 0, spec.shape[3]), np.float32)
    return session.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]


def _kl(teacher, student):
    """Mean per-token KL(teacher || student) of two logit arrays, in numpy."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    t, s = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return float((np.exp(t) * (t - s)).sum(-1).mean())


@pytest.mark.parametrize("rank", [0, 4])
def test_healing_lowers_the_kl_to_the_teacher_as_onnx_runtime_measures_it(pair, tmp_path, rank):
    teacher, pruned, calib = pair
    out = tmp_path / "healed.onnx"
    plan = heal_file(pruned, out, teacher, _config(calib, lora_rank=rank, lr=1e-2 if rank else 3e-3), progress=False)
    record = plan["healing"]
    assert record["steps_done"] == 24 and record["best_step"] > 0
    assert record["held_out_curve"][0][0] == 0 and record["best_held_out_loss"] < record["held_out_curve"][0][2]
    assert plan["steps"] == json.loads((tmp_path / "healed.plan.json").read_text())["steps"]  # the prune's plan kept
    # The written graph is the pruned graph, node for node; only initializer values changed.
    before, after = onnx.load(str(pruned)), onnx.load(str(out))
    assert [(n.op_type, list(n.input)) for n in before.graph.node] == [(n.op_type, list(n.input)) for n in after.graph.node]
    assert [t.name for t in before.graph.initializer] == [t.name for t in after.graph.initializer]
    onnx.checker.check_model(str(out), full_check=True)
    # Held-out windows, measured by ONNX Runtime on the written files: closer to the teacher than the input was.
    ids = np.random.default_rng(9).integers(0, 128, (4, 24))
    reference = _logits(str(teacher), ids)
    assert _kl(reference, _logits(str(out), ids)) < _kl(reference, _logits(str(pruned), ids))


def test_lora_trains_far_fewer_values_and_merges_into_the_weights(pair):
    _, pruned, _ = pair
    model = load_model(pruned)
    full, lora = Student(model), Student(model, lora_rank=2)
    assert lora.trainable_count() < full.trainable_count() / 4
    # Before any step the adapters add nothing: the merged weights are the initializers.
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, value in lora.updated_initializers().items():
        np.testing.assert_array_equal(value, values[name])
    roles = trainable_roles(model)
    assert {"linear", "vector", "embedding"} <= set(roles.values())
    assert not any("cos" in n or "sin" in n for n in roles)  # rotary caches stay frozen


def test_no_step_that_helps_returns_the_input_unchanged(pair, tmp_path):
    """A learning rate that only hurts: the best checkpoint is step 0, the input, bit for bit."""
    teacher, pruned, calib = pair
    out = tmp_path / "same.onnx"
    plan = heal_file(pruned, out, teacher, _config(calib, steps=8, eval_every=4, lr=50.0, warmup=1), progress=False)
    assert plan["healing"]["best_step"] == 0
    before = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(pruned)).graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_an_interrupt_keeps_the_best_so_far_and_resume_continues(pair, tmp_path, monkeypatch):
    teacher, pruned, calib = pair
    from onnxdepth.heal import loop

    real_lr = loop._lr_at
    calls = []

    def interrupting(step, config, elapsed):
        calls.append(step)
        if step == 17 and len(calls) == 18:  # the first run only: Ctrl-C during step 17
            raise KeyboardInterrupt
        return real_lr(step, config, elapsed)

    monkeypatch.setattr(loop, "_lr_at", interrupting)
    out = tmp_path / "healed.onnx"
    plan = heal_file(pruned, out, teacher, _config(calib), progress=False)
    record = plan["healing"]
    assert record["interrupted"] and record["steps_done"] == 17 and record["best_step"] in (8, 16)
    checkpoint = tmp_path / "healed.heal.pt"
    assert checkpoint.exists()  # kept for --resume
    onnx.checker.check_model(str(out), full_check=True)
    resumed = heal_file(pruned, out, teacher, _config(calib), resume=True, progress=False)["healing"]
    assert not resumed["interrupted"] and resumed["steps_done"] == 24
    assert [c[0] for c in resumed["held_out_curve"]] == [0, 8, 16, 24]
    assert not checkpoint.exists()  # every step done


def test_max_minutes_stops_the_run_and_keeps_the_checkpoint(pair, tmp_path):
    teacher, pruned, calib = pair
    out = tmp_path / "timed.onnx"
    record = heal_file(pruned, out, teacher, _config(calib, steps=100000, max_minutes=0.05), progress=False)["healing"]
    assert record["stopped_by"] == "max-minutes" and 0 < record["steps_done"] < 100000
    assert (tmp_path / "timed.heal.pt").exists()


def test_refusals(pair, tmp_path):
    teacher, pruned, calib = pair
    with pytest.raises(InvalidArgumentError, match="--steps"):
        HealConfig(steps=0)
    with pytest.raises(InvalidArgumentError, match="--lora-rank"):
        HealConfig(lora_rank=-1)
    with pytest.raises(InvalidArgumentError, match="--lr"):
        HealConfig(lr=float("nan"))
    with pytest.raises(InvalidArgumentError, match="--grad-checkpoint"):
        HealConfig(checkpoint_segments=-2)
    short = tmp_path / "short.npz"
    np.savez(short, input_ids=np.zeros((3, 24), dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match="windows"):
        heal_file(pruned, tmp_path / "x.onnx", teacher, _config(short), progress=False)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_heal_and_prune_heal_steps(pair, tmp_path, cli):
    teacher, pruned, calib = pair
    out = tmp_path / "cli.onnx"
    code, stdout, err = cli("heal", pruned, out, "--teacher", teacher, "--calib", calib, "--steps", "8",
                            "--eval-every", "4", "--held-out", "4", "--seq-len", "24", "--lr", "3e-3",
                            "--grad-checkpoint", "4", "--heal-device", "cpu")
    assert code == 0, err
    assert "healed 8 steps" in stdout and "held-out loss" in stdout and "perplexity" in stdout
    record = json.loads(api.plan_path_for(Path(out)).read_text())["healing"]
    assert record["device"] == "cpu" and record["options"]["checkpoint_segments"] == 4
    code, _, err = cli("heal", pruned, out, "--teacher", teacher, "--steps", "2", "--grad-checkpoint", "-1")
    assert code != 0 and "--grad-checkpoint" in err and "Traceback" not in err
    code, _, err = cli("heal", pruned, out, "--teacher", tmp_path / "missing.onnx", "--steps", "2")
    assert code != 0 and "missing.onnx" in err and "Traceback" not in err
    code, _, err = cli("heal", pruned, pruned, "--teacher", teacher, "--steps", "2")
    assert code != 0 and "equals the input" in err
    both = tmp_path / "both.onnx"
    code, stdout, err = cli("prune", teacher, both, "--ratio", "0.3", "--importance", "magnitude", "--calib", calib,
                            "--heal-steps", "6", "--eval-every", "3", "--held-out", "4", "--seq-len", "24")
    assert code == 0, err
    plan = json.loads((tmp_path / "both.plan.json").read_text())
    assert plan["healing"]["steps_done"] == 6 and plan["reduction"] >= 0.3
    code, _, err = cli("prune", teacher, tmp_path / "never.onnx", "--ratio", "0.3", "--heal-steps", "0")
    assert code != 0 and "--heal-steps" in err and not (tmp_path / "never.onnx").exists()


CHAT_TEMPLATE = ("{% for message in messages %}<s> {{ message['role'] }} : {{ message['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant : {% endif %}")


def test_data_free_healing_samples_chats_from_an_instruct_teacher(pair, tmp_path):
    import shutil

    from onnxdepth.heal.data import text_windows
    from onnxdepth.tokenizer_io import load_tokenizer, user_turn_prefix
    from tiny_lm import _tokenizer

    teacher, pruned, _ = pair
    plain = _tokenizer()
    assert user_turn_prefix(plain) is None  # no template: plain text from BOS
    chat = _tokenizer()
    chat.chat_template = CHAT_TEMPLATE
    folder = tmp_path / "teacher"
    folder.mkdir()
    shutil.copy(teacher, folder / "model.onnx")
    chat.save_pretrained(str(folder))
    prefix = user_turn_prefix(load_tokenizer(folder))
    # "<s> user :": BOS, then the role (not in the word vocabulary: [UNK]) and the colon; the message text is not in it.
    assert prefix == chat("<s> user :", add_special_tokens=False)["input_ids"] and len(prefix) == 3
    windows = text_windows(None, str(folder / "model.onnx"), seq_len=24, held_out=2, wanted=6, seed=3)
    assert windows.train.shape == (6, 24) and windows.held_out.shape == (2, 24)
    assert (windows.train[:, :3] == prefix).all() and (windows.held_out[:, :3] == prefix).all()
    assert "chats" in windows.source
    assert not np.array_equal(windows.train[:2], windows.held_out)  # another seed for the held-out windows
    again = text_windows(None, str(folder / "model.onnx"), seq_len=24, held_out=2, wanted=6, seed=3)
    assert np.array_equal(again.train, windows.train)  # seeded
    out = tmp_path / "healed.onnx"
    record = heal_file(pruned, out, folder / "model.onnx", _config(None, steps=8, eval_every=4), progress=False)
    assert record["healing"]["data"].startswith("chats (") and "sampled from the teacher" in record["healing"]["data"]
    assert out.is_file()


def test_a_template_that_raises_or_drops_the_message_gives_no_prefix():
    from onnxdepth.tokenizer_io import user_turn_prefix
    from tiny_lm import _tokenizer

    tok = _tokenizer()
    tok.chat_template = "{{ raise_exception('no chats here') }}"
    assert user_turn_prefix(tok) is None
    tok.chat_template = "<s> hello"
    assert user_turn_prefix(tok) is None


def test_the_training_device_is_resolved_and_refused_when_missing(monkeypatch):
    import torch

    from onnxdepth.runtime import ProviderUnavailableError

    with pytest.raises(InvalidArgumentError, match="--device"):
        HealConfig(device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert HealConfig().torch_device() == "cpu"
    with pytest.raises(ProviderUnavailableError, match="no GPU"):
        HealConfig(device="cuda").torch_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert HealConfig().torch_device() == "cuda"  # auto: the GPU when torch sees one


@pytest.mark.parametrize("rank", [0, 2])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pair, rank):
    import torch

    from onnxdepth.heal.objectives import LMDistillation

    teacher, pruned, _ = pair
    model = load_model(pruned)
    objective = LMDistillation(str(teacher), model)
    tokens = np.random.default_rng(1).integers(0, 128, (2, 16)).astype(np.int64)
    target = objective.targets(tokens)
    results = []
    for segments in (0, 3, 1000):  # off, three runs, one run per node
        torch.manual_seed(0)  # the same LoRA initialisation on every side
        student = Student(model, lora_rank=rank, checkpoint_segments=segments)
        with torch.no_grad():  # nonzero adapters, so that their product is in the gradients too
            for p in student.parameters():
                p.add_(0.01)
        loss = objective.loss(torch, objective.output(torch, student.module, tokens), target, tokens)
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in student.parameters()]))
    assert student.module.segments > 3  # capped at the node count, but many runs
    for loss, grads in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        assert all(torch.allclose(g, r, rtol=1e-4, atol=1e-6) for g, r in zip(grads, results[0][1]))
    with torch.no_grad():  # held-out checks: the plain module
        assert torch.equal(objective.output(torch, student.module, tokens),
                           objective.output(torch, student.module.inner, tokens))


def test_activation_estimate_scales_with_the_rows(pair):
    from onnxdepth.heal.memory import activation_bytes
    from onnxdepth.heal.objectives import LMDistillation

    teacher, pruned, _ = pair
    model = load_model(pruned)
    objective = LMDistillation(str(teacher), model)
    student = Student(model)
    tokens = np.random.default_rng(2).integers(0, 128, (4, 16)).astype(np.int64)
    one, four = (activation_bytes(torch, student.module,
                                  lambda rows=rows: objective.output(torch, student.module, tokens[:rows]))
                 for rows in (1, 4))
    assert one > 0
    assert 3.5 * one < four < 4.5 * one  # activations grow with the rows; the weights are left out
    with torch.no_grad():  # a forward without gradients saves nothing, but the estimate turns autograd on
        assert activation_bytes(torch, student.module, lambda: objective.output(torch, student.module,
                                                                                tokens[:1])) == one


def test_checkpointing_turns_on_when_memory_asks_for_it(pair, tmp_path, monkeypatch):
    from onnxdepth.heal import memory

    teacher, pruned, calib = pair
    roomy = heal_file(pruned, tmp_path / "roomy.onnx", teacher, _config(calib, steps=2), progress=False)["healing"]
    assert roomy["checkpointing"]["mode"] == "auto" and roomy["checkpointing"]["segments"] == 0
    need = roomy["checkpointing"]["step_activation_bytes"]
    assert 0 < need < roomy["checkpointing"]["budget_bytes"]
    # A device with room for a fifth of the step's activations (after the optimiser's share): 10 segments.
    trained = roomy["trainable_values"]
    monkeypatch.setattr(memory, "device_budget",
                        lambda torch, device: memory.OPTIMISER_BYTES * trained + int(need / 5 / memory.SAFE_SHARE) + 100)
    tight = heal_file(pruned, tmp_path / "tight.onnx", teacher, _config(calib, steps=2), progress=False)["healing"]
    assert tight["checkpointing"]["segments"] == 10 and tight["options"]["checkpoint_segments"] == 10
    assert tight["steps_done"] == 2
    fixed = heal_file(pruned, tmp_path / "fixed.onnx", teacher, _config(calib, steps=2, checkpoint_segments=0),
                      progress=False)["healing"]
    assert fixed["checkpointing"] == {"segments": 0, "mode": "fixed", "step_activation_bytes": None,
                                      "budget_bytes": None}  # an explicit 0 is never overridden


def test_sampled_windows_mix_into_a_calibration_file(pair, tmp_path):
    from onnxdepth.heal.data import text_windows

    teacher, pruned, calib = pair  # 48 windows of 24 tokens in the .npz
    windows = text_windows(str(calib), str(teacher), seq_len=24, held_out=4, wanted=100, sampled=16)
    file_rows = np.load(calib)["input_ids"]
    # Every file window but the 3 held out (the file held out 4; one went back to training), and the 16 sampled.
    assert windows.train.shape == (45 + 16, 24)
    assert windows.held_out.shape == (4, 24)
    held_from_file = [row for row in windows.held_out if (file_rows == row).all(axis=1).any()]
    assert len(held_from_file) == 3  # 16 of 60 windows are sampled: one of the four held out is sampled
    assert "mixed in" in windows.source and "45 + 16 training windows" in windows.source
    alone = text_windows(None, str(teacher), seq_len=24, held_out=2, wanted=100, sampled=5)
    assert alone.train.shape == (5, 24)  # without a file: the number sampled
    with pytest.raises(InvalidArgumentError, match="--sampled"):
        HealConfig(sampled=-1)
    with pytest.raises(InvalidArgumentError, match="--held-out"):
        text_windows(str(calib), str(teacher), seq_len=24, held_out=1, wanted=10, sampled=4)
