"""--precision: bf16 autocast trains and resumes; fp16 scales the loss and a skipped step is no update; what trains,
its optimizer state and the importance accumulators stay float32; the frozen base is stored in the low dtype."""
import json
import runpy
import sys

import pytest
import torch
from safetensors.torch import load_file

import allocate
import importance
import lora
import precision
from tiny import ROOT, glue_dir, kill_after_first_checkpoint, run_train, tiny_model  # noqa: F401 (fixtures)

FAST = ["--batch-size", 8, "--max-len", 24, "--log-every", 1, "--probe-batches", 2, "--eval-batch-size", 16]


def lora_model(tiny_encoder, prec, targets="query,value"):
    model = tiny_encoder("roberta")
    adapters = lora.inject(model, targets, lambda lin: lora.LoRALinear(lin, r=4, alpha=4.0))
    precision.cast_frozen(model, prec)
    return model, adapters


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_frozen_base_in_low_precision_what_trains_in_float32(tiny_encoder, tiny_ids, prec):
    model, adapters = lora_model(tiny_encoder, prec)
    importance.set_tracking(adapters, "gradient")
    low = precision.PRECISIONS[prec]
    trained = {id(q) for a in adapters.values() for q in a.adapter_params()} | \
        {id(q) for q in lora.head_parameters(model)}
    for name, q in model.named_parameters():
        assert q.dtype == (torch.float32 if id(q) in trained else low), name
    assert all(b.dtype in (torch.float32, torch.float64, torch.long) for b in model.buffers())
    opt, sched = allocate.build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-3, total_steps=10)
    model.train()
    with precision.autocast(prec, torch.device("cpu")):
        out = model(input_ids=tiny_ids, labels=torch.tensor([0, 1]))
    assert out.logits.dtype == low
    out.loss.backward()
    opt.step()
    for a in adapters.values():
        assert a.lora_A.grad.dtype == a.lora_B.grad.dtype == torch.float32
        assert a.grad_score.dtype == torch.float32 and a.grad_count.dtype == torch.float64
        assert torch.isfinite(a.grad_score) and a.grad_score > 0
    assert all(v.dtype == torch.float32 for st in opt.state.values() for k, v in st.items() if k != "step")


@pytest.mark.parametrize("prec", ["bf16", "fp16"])
def test_a_module_with_a_trained_parameter_keeps_float32(tiny_encoder, tiny_ids, prec):
    """BitFit trains biases: their Linear and LayerNorm modules stay float32 (a half weight beside a float32 bias
    fails in CPU layer_norm); modules without trained parameters, such as the embeddings, are cast."""
    model = tiny_encoder("roberta")
    for name, q in model.named_parameters():
        q.requires_grad_(name.endswith(".bias") or name.startswith("classifier"))
    precision.cast_frozen(model, prec)
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            dtype = torch.float32 if any(q.requires_grad for q in own) else precision.PRECISIONS[prec]
            assert all(q.dtype == dtype for q in own), module
    assert model.roberta.embeddings.word_embeddings.weight.dtype == precision.PRECISIONS[prec]
    model.train()
    with precision.autocast(prec, torch.device("cpu")):
        model(input_ids=tiny_ids, labels=torch.tensor([0, 1])).loss.backward()
    assert all(q.grad.dtype == torch.float32 for q in model.parameters() if q.requires_grad)


def test_fp16_skipped_step_changes_nothing_and_scores_are_unscaled(tiny_encoder, tiny_ids):
    """An overflowing step (a scale too large for fp16) is skipped: weights, Adam state and scores stay as they were.
    A step that goes through adds to the gradient scores what it measured divided by the scale: two scales agree,
    and agree with float32 up to fp16's rounding."""
    def run(prec, init_scale):
        model, adapters = lora_model(tiny_encoder, prec)
        importance.set_tracking(adapters, "gradient")
        opt, _ = allocate.build_optimizer("local", adapters, lora.head_parameters(model), lr=1e-3, total_steps=10)
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=prec == "fp16")
        model.train()
        before = precision.score_snapshot(adapters)
        weights = {k: v.clone() for k, v in lora.adapter_state_dict(model, adapters).items()}
        with precision.autocast(prec, torch.device("cpu")):
            loss = model(input_ids=tiny_ids, labels=torch.tensor([0, 1])).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        stepped = precision.step(scaler, opt, adapters, before)
        return stepped, model, adapters, weights, opt

    stepped, model, adapters, weights, opt = run("fp16", 2.0 ** 60)  # the scaled gradients overflow fp16
    assert not stepped
    after = lora.adapter_state_dict(model, adapters)
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # weights and every score and count buffer
    assert all(not o.state for o in opt.optimizers.values()) and not opt.head.state and opt.t == 0
    stepped, _, a, _, opt = run("fp16", 2.0 ** 12)
    assert stepped and opt.t == 1
    _, _, b, _, _ = run("fp16", 2.0 ** 16)
    _, _, ref, _, _ = run("fp32", 1.0)
    for name in ref:
        assert a[name].grad_count == b[name].grad_count == ref[name].grad_count > 0
        assert a[name].grad_score.item() == pytest.approx(b[name].grad_score.item(), rel=1e-4)
        assert a[name].grad_score.item() == pytest.approx(ref[name].grad_score.item(), rel=2e-2)


def test_bf16_trains_and_resumes_bitwise_after_sigkill(tmp_path, tiny_model, glue_dir):
    common = ["--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--precision", "bf16", "--active", 2,
              "--rank", 2, "--period", 3, "--optimizer", "local", "--max-steps", 24, "--save-every", 1,
              "--eval-every", 100, "--lr", 1e-2, *FAST]
    ref = tmp_path / "ref"
    run_train(*common, "--output-dir", ref)
    res = json.loads((ref / "results.json").read_text())
    assert res["precision"] == "bf16" and res["updates"] == 24
    losses = [m["train_loss"] for m in map(json.loads, open(ref / "metrics.jsonl")) if "train_loss" in m]
    assert len(losses) == 24 and all(map(lambda x: x == x, losses))  # finite, logged every step
    ckpt = torch.load(ref / "checkpoint.pt", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.float64, torch.long) for v in ckpt["model"].values())
    adam = [v for st in ckpt["optimizer"]["modules"].values() for s in st["state"].values() for k, v in s.items()
            if k != "step"]
    assert adam and all(v.dtype == torch.float32 for v in adam)
    trained = load_file(ref / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in trained.items())

    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint([sys.executable, ROOT / "train.py", "--no-progress", *common,
                                        "--output-dir", killed], killed) < 24
    run_train(*common, "--output-dir", killed, "--resume")
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == resumed.keys() and all(torch.equal(trained[k], resumed[k]) for k in trained)


def test_fp16_skipped_steps_are_no_updates_in_train_py(tmp_path, tiny_model, glue_dir, monkeypatch):
    """train.py with a loss scale too large at first: the first steps overflow and are skipped. They advance neither
    the LR schedule nor the modules' n_updates nor the allocation clock (re-allocation every 2 updates)."""
    def big_scaler(prec, device):
        return torch.amp.GradScaler(device.type, init_scale=2.0 ** 40, enabled=prec == "fp16")
    monkeypatch.setattr(precision, "scaler", big_scaler)
    out = tmp_path / "run"
    argv = ["train.py", "--no-progress", "--task", "rte", "--model", tiny_model, "--data-dir", glue_dir,
            "--precision", "fp16", "--active", 2, "--rank", 2, "--period", 2, "--max-steps", 40, "--save-every", 0,
            "--eval-every", 100, "--lr", 1e-3, "--output-dir", out, *FAST]
    monkeypatch.setattr(sys, "argv", list(map(str, argv)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    g = runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    skipped = 40 - g["updates"]
    assert 0 < skipped < 40  # 2^40 needs about 24 halvings before fp16 gradients are finite
    res = json.loads((out / "results.json").read_text())
    assert res["updates"] == g["updates"] and res["steps"] == 40
    steps = [s for s, _ in g["alloc"].history]
    assert steps == list(range(0, g["updates"], 2))  # every 2 updates, on the update clock
    counts = sorted(int(a.n_updates) for a in g["adapters"].values())
    assert sum(counts) == 2 * g["updates"]  # 2 active modules per update, none for a skipped step
    lrs = [m["lr"]["head"] for m in map(json.loads, open(out / "metrics.jsonl")) if "lr" in m]
    first = next(i for i, lr in enumerate(lrs) if lr > 0)  # the LR schedule waits for the first update
    assert first >= 1 and lrs[first] == pytest.approx(1e-3 / g["warmup_steps"])
    assert sum(a != b for a, b in zip(lrs, lrs[1:])) == g["updates"]  # it moves at updates only
