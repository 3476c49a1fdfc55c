"""train.py end to end, as a user runs it: a subprocess on a tiny random RoBERTa loaded from a local dir."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiny import ROOT, SHARED_GLUE, build_tiny_model, glue_dir, kill_after_first_checkpoint, run_train, tiny_model  # noqa: F401 (fixtures)

FAST = ["--batch-size", 8, "--max-len", 24, "--log-every", 1, "--probe-batches", 2, "--eval-batch-size", 16]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def load_merged_and_eval(out, glue_dir, task="rte"):
    """The merged export alone (plain transformers) must reproduce the run's final dev metrics."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    import glue
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "merged"))
    model = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "merged")).eval()
    dev = glue.encode(tok, glue.load_split(task, "dev", glue_dir), 24)
    with torch.no_grad():
        logits = model(**{k: v for k, v in DataCollatorWithPadding(tok)(dev).items() if k != "labels"}).logits
    preds = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
    return glue.compute_metrics(task, preds.numpy(), [ex["label"] for ex in dev])


@pytest.mark.parametrize("method", ["lora", "vera", "full", "bitfit"])
def test_each_method_writes_every_output(tmp_path, tiny_model, glue_dir, method):
    out = tmp_path / "run"
    proc = run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--method", method,
                     "--max-steps", 6, "--eval-every", 3, "--save-every", 3, "--rank", 4, "--lr", 1e-3,
                     "--output-dir", out, *FAST)
    assert "trainable parameters:" in proc.stdout
    # one calm line about the head, the effective budget once, nothing from transformers' load report
    assert "task head (2 outputs: entailment, not_entailment) loaded from the checkpoint" in proc.stdout
    assert "budget: 6 steps = 1 epoch(s) of 6 steps (batch 8, 48 examples; --max-steps), warmup 0 steps, eval every 3" \
        in proc.stdout and "epochs:" not in proc.stdout
    assert "MISSING" not in proc.stdout + proc.stderr and "Loading weights" not in proc.stderr
    args = json.loads((out / "args.json").read_text())
    assert args["method"] == method and "commit" in args and args["task"] == "rte"
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics if "train_loss" in m] == [1, 2, 3, 4, 5, 6]
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [3, 6] and all("accuracy" in m for m in evals)
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "rte" and res["method"] == method and res["headline_metric"] == "accuracy"
    assert res["final"] == evals[-1]["accuracy"] and res["best"] == max(m["accuracy"] for m in evals)
    assert 0 < res["active_trainable_params"] <= res["trainable_params"] <= res["total_params"]
    assert res["peak_memory_mb"] > 0 and res["wall_time_s"] >= 0
    assert res["machine"]["cpu"] and res["machine"]["torch"] == torch.__version__
    assert (out / "loss.png").stat().st_size > 0 and (out / "checkpoint.pt").exists()
    assert load_merged_and_eval(out, glue_dir)["accuracy"] == pytest.approx(res["final"])
    if method == "lora":
        cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["modules_to_save"] == ["classifier"]
        keys = load_file(out / "adapter" / "adapter_model.safetensors")
        assert sum(k.endswith("lora_A.weight") for k in keys) == 4  # query+value x 2 layers
    if method == "vera":  # PEFT's VeRA format with the projections (tests/test_vera.py loads it with peft)
        cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "VERA" and cfg["r"] == 4 and cfg["save_projection"]
        keys = load_file(out / "adapter" / "adapter_model.safetensors")
        assert {"base_model.vera_A", "base_model.vera_B"} <= set(keys)
        assert sum(k.endswith("vera_lambda_d") for k in keys) == 4
    if method in ("full", "bitfit"):
        assert not (out / "adapter").exists()
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert merged["label2id"] == {"entailment": 0, "not_entailment": 1}
    if method == "full":
        assert res["trainable_params"] == res["total_params"]


DYNAMIC = [  # (allocator, importance, schedule, optimizer, budget flags)
    ("topk", "forward", "periodic", "global", ["--active", 3]),
    ("threshold", "forward", "periodic", "local", ["--threshold", 0.5, "--window", "since_last"]),
    ("multinomial", "gradient", "periodic", "global", ["--active", 2]),
    ("discounted", "forward", "periodic", "local", ["--active", 3]),
    ("discounted", "param_grad", "once", "global", ["--active", 3]),
    ("uniform", "random", "once", "local", ["--active", 1]),
]


@pytest.mark.parametrize("allocator,measure,schedule,optimizer,budget", DYNAMIC)
def test_dynamic_allocation_runs(tmp_path, tiny_model, glue_dir, allocator, measure, schedule, optimizer, budget):
    out = tmp_path / "run"
    run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--targets", "all", "--rank", 2,
              "--allocator", allocator, "--importance", measure, "--schedule", schedule, "--optimizer", optimizer,
              "--period", 2, "--realloc-at", 3, "--max-steps", 8, "--save-every", 4, "--eval-every", 4,
              "--output-dir", out, *budget, *FAST)
    allocs = [m for m in read_jsonl(out / "metrics.jsonl") if "active" in m]
    expected_steps = [0, 2, 4, 6] if schedule == "periodic" else [0, 3]  # step 8 is the end: no re-allocation
    assert [a["step"] for a in allocs] == expected_steps
    names = set(torch.load(out / "checkpoint.pt", weights_only=True)["alloc"]["config"]["names"])
    assert len(names) == 12  # 6 targets x 2 layers
    for a in allocs:
        assert set(a["active"]) <= names and len(set(a["active"])) == len(a["active"]) >= 1
        if "--active" in budget:
            assert len(a["active"]) == budget[1]
        if measure != "random":  # every module has a non-zero score at every allocation (no lockout)
            assert len(a["scores"]) == 12 and min(a["scores"]) > 0, a
    # selection.csv: fraction of steps each module was active; for a fixed K they sum to K
    with open(out / "selection.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["layer", "query", "key", "value", "attn_out", "ffn_in", "ffn_out"] and len(rows) == 3
    fractions = [float(x) for r in rows[1:] for x in r[1:]]
    assert all(0 <= x <= 1 for x in fractions)
    spans = [(a["step"], b["step"]) for a, b in zip(allocs, allocs[1:] + [{"step": 8}])]
    active_steps = sum((e - s) * len(a["active"]) for (s, e), a in zip(spans, allocs))
    assert sum(fractions) == pytest.approx(active_steps / 8, abs=1e-3)
    assert (out / "selection.png").stat().st_size > 0
    if allocator == "topk":  # figures.py redraws both figures from the run's files alone
        os.remove(out / "selection.png")
        os.remove(out / "loss.png")
        subprocess.run([sys.executable, str(ROOT / "figures.py"), str(out)], check=True, capture_output=True)
        assert (out / "selection.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert res["dynamic"] and res["active_trainable_params"] < res["trainable_params"]


# (allocator, importance, depth budget, allocation budget) on 12 modules, 6 per layer, 2 layers. Every allocator
# with every measure is tested in-process (test_allocate.py); these run train.py end to end.
DEPTH = [
    ("threshold", "gradient", ["--memory-budget", 0.75], ["--threshold", 0.5]),
    ("multinomial", "param_grad", ["--max-depth", 1], ["--active", 3]),
    ("discounted", "forward", ["--memory-budget", 0.75], ["--active", 6]),
]


@pytest.mark.parametrize("allocator,measure,depth_budget,budget", DEPTH)
def test_depth_budget_holds_at_every_allocation(tmp_path, tiny_model, glue_dir, allocator, measure, depth_budget,
                                                budget):
    out = tmp_path / "run"
    run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--targets", "all", "--rank", 2,
              "--allocator", allocator, "--importance", measure, "--period", 2, "--max-steps", 6,
              "--eval-every", 6, "--output-dir", out, *depth_budget, *budget, *FAST)
    records = read_jsonl(out / "metrics.jsonl")
    model = next(r for r in records if "cost_model" in r)
    costs, max_depth = model["cost_model"], model["max_depth"]
    totals = [c["total"] for c in costs]
    assert [c["depth"] for c in costs] == [0, 1, 2] and totals == sorted(totals)
    if "--memory-budget" in depth_budget:  # the deepest depth whose cost is within the fraction of LoRA's
        limit = depth_budget[1] * totals[-1]
        assert totals[max_depth] <= limit and (max_depth == 2 or totals[max_depth + 1] > limit)
        limit_bytes = limit
    else:
        assert max_depth == depth_budget[1]
        limit_bytes = totals[max_depth]
    assert max_depth == 1 and all(".layer.1." in n for n in model["eligible"]) and len(model["eligible"]) == 6
    allocs = [r for r in records if "active" in r]
    assert [a["step"] for a in allocs] == [0, 2, 4]
    names = torch.load(out / "checkpoint.pt", weights_only=True)["alloc"]["config"]["names"]
    for a in allocs:
        assert a["active"] and all(n in model["eligible"] for n in a["active"]) and a["depth"] <= max_depth
        assert a["predicted_bytes"] == totals[a["depth"]] <= limit_bytes
        if "--active" in budget:
            assert len(a["active"]) == budget[1]
        if measure in ("gradient", "param_grad"):  # the probe's backward stops at the floor too: no score below
            assert [s > 0 for s in a["scores"]] == [n in model["eligible"] for n in names], a["scores"]
    with open(out / "selection.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "0" and all(float(x) == 0 for x in rows[1][1:])  # layer 0, below the floor: never active
    res = json.loads((out / "results.json").read_text())
    assert res["max_depth"] == max_depth and res["predicted_bytes"] == totals[max_depth]
    assert (out / "selection.png").stat().st_size > 0


def test_depth_budget_bad_input_gives_one_line(tmp_path, tiny_model, glue_dir):
    base = ["--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--max-steps", 2, *FAST]
    cases = [
        (["--active", 2, "--max-depth", 0], "--max-depth must be >= 1"),
        (["--active", 2, "--max-depth", 3], "more than the 2 layers"),
        (["--active", 2, "--memory-budget", 0.001], "the head alone needs"),
        (["--active", 3, "--max-depth", 1], "--active 3 is more than the 2 adapter modules in the top 1"),
        (["--max-depth", 1], "give --active K or --threshold P"),
        (["--active", 2, "--max-depth", 1, "--memory-budget", 0.5], "two depth budgets"),
        (["--active", 2, "--memory-budget", 1.5], "in (0, 1]"),
    ]
    for i, (flags, message) in enumerate(cases):
        line = err(run_train(*base, *flags, "--output-dir", tmp_path / str(i), check=False))
        assert message in line, (flags, line)


@pytest.mark.parametrize("measure", ["forward", "gradient", "param_grad"])
def test_every_module_active_trains_exactly_as_lora(tmp_path, tiny_model, glue_dir, measure):
    """DynaLoRA with a budget of all modules is plain LoRA: the probe, tracking and re-allocation change no
    number (the tiny model has dropout, so a probe that drew from the training RNG would show here)."""
    common = ["--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--rank", 4, "--lr", 1e-2,
              "--max-steps", 6, "--eval-every", 6, *FAST]
    run_train(*common, "--output-dir", tmp_path / "lora")
    run_train(*common, "--active", 4, "--importance", measure, "--allocator", "discounted", "--period", 2,
              "--output-dir", tmp_path / "dyna")
    assert [m["step"] for m in read_jsonl(tmp_path / "dyna" / "metrics.jsonl") if "active" in m] == [0, 2, 4]
    a, b = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("lora", "dyna"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # it trained


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, tiny_model, glue_dir):
    common = ["--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--active", 2, "--rank", 2,
              "--allocator", "discounted", "--period", 3, "--optimizer", "local", "--dropout", 0.1,
              "--max-steps", 40, "--save-every", 1, "--eval-every", 100, *FAST, "--log-every", 3,
              "--group-by-length"]  # its batch order must be rebuilt exactly on resume too
    ref = tmp_path / "ref"
    run_train(*common, "--output-dir", ref)
    killed = tmp_path / "killed"
    step = kill_after_first_checkpoint([sys.executable, ROOT / "train.py", "--no-progress", *common,
                                        "--output-dir", killed], killed)
    assert 1 <= step < 40
    run_train(*common, "--output-dir", killed, "--resume")
    a = load_file(ref / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (ref, killed))
    assert ca["alloc"]["history"] == cb["alloc"]["history"]
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    ma, mb = read_jsonl(ref / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert ma == mb  # the resumed log has each step once, with the same values


def test_regression_task_and_cola(tmp_path, tiny_model, glue_dir):
    proc = run_train("--task", "stsb", "--model", tiny_model, "--data-dir", glue_dir, "--max-steps", 20,
                     "--output-dir", tmp_path / "stsb", *FAST)
    res = json.loads((tmp_path / "stsb" / "results.json").read_text())
    assert res["headline_metric"] == "pearson" and {"pearson", "spearmanr"} <= set(res["dev_metrics"])
    # the tiny model's 2-label output layer does not fit a 1-output regression head: a new one, said in one line
    assert "task head (1 output: regression): classifier.out_proj new, randomly initialised" in proc.stdout
    assert "NOT in the checkpoint" not in proc.stdout and "MISMATCH" not in proc.stdout + proc.stderr
    evals = [m["step"] for m in read_jsonl(tmp_path / "stsb" / "metrics.jsonl") if "eval_loss" in m]
    assert evals == list(range(2, 21, 2))  # by default 10 evals per run
    run_train("--task", "CoLA", "--model", tiny_model, "--data-dir", glue_dir, "--max-steps", 8, "--eval-every", 0,
              "--output-dir", tmp_path / "cola", *FAST)
    res = json.loads((tmp_path / "cola" / "results.json").read_text())
    assert res["headline_metric"] == "mcc" and "mcc" in res["dev_metrics"]
    evals = [m["step"] for m in read_jsonl(tmp_path / "cola" / "metrics.jsonl") if "eval_loss" in m]
    assert evals == [6, 8]  # --eval-every 0: once per epoch (48 examples, batch 8) and at the end
    merged = json.loads((tmp_path / "cola" / "merged" / "config.json").read_text())
    assert merged["id2label"] == {"0": "unacceptable", "1": "acceptable"}


@pytest.mark.skipif(not (SHARED_GLUE / "RTE" / "train.tsv").exists(), reason="real GLUE files not present")
def test_real_rte_files(tmp_path):
    import glue
    data = glue.load_split("rte", "train", str(SHARED_GLUE))
    model = build_tiny_model(tmp_path / "m", data["text_a"][:500] + data["text_b"][:500])
    run_train("--task", "rte", "--model", model, "--data-dir", SHARED_GLUE, "--max-steps", 4, "--batch-size", 8,
              "--max-len", 64, "--max-train-samples", 64, "--output-dir", tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    evals = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in m]
    assert res["headline_metric"] == "accuracy" and [m["step"] for m in evals] == [1, 2, 3, 4]  # 10 evals at most
    # accuracy over all 277 dev pairs is a multiple of 1/277
    assert round(res["final"] * 277 / 100) == pytest.approx(res["final"] * 277 / 100, abs=1e-6)


def err(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def test_bad_input_gives_one_clear_line(tmp_path, tiny_model, glue_dir):
    base = ["--model", tiny_model, "--data-dir", glue_dir, "--max-steps", 2, *FAST]
    assert "boolq" in err(run_train("--task", "boolq", *base, "--output-dir", tmp_path / "a", check=False))
    os.makedirs(tmp_path / "g" / "RTE")
    (tmp_path / "g" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    line = err(run_train("--task", "rte", "--model", tiny_model, "--data-dir", tmp_path / "g", "--max-len", 24,
                         "--output-dir", tmp_path / "b", check=False))
    assert "dev.tsv" in line
    (tmp_path / "g" / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\n")
    line = err(run_train("--task", "rte", "--model", tiny_model, "--data-dir", tmp_path / "g", "--max-len", 24,
                         "--output-dir", tmp_path / "c", check=False))
    assert "dev.tsv:2" in line
    line = err(run_train("--task", "rte", *base, "--active", 5, "--output-dir", tmp_path / "d", check=False))
    assert "5" in line and "4" in line  # asks for 5 of the 4 query+value modules
    line = err(run_train("--task", "rte", *base, "--active", 2, "--threshold", 0.5, "--output-dir", tmp_path / "e",
                         check=False))
    assert "--threshold" in line
    line = err(run_train("--task", "rte", "--model", tmp_path / "nowhere", "--data-dir", glue_dir,
                         "--output-dir", tmp_path / "f", check=False))
    assert "--model DIR" in line
    line = err(run_train("--task", "rte", "--model", "roberta-base", "--data-dir", glue_dir,
                         "--output-dir", tmp_path / "h", check=False))  # HF_HUB_OFFLINE=1 in run_train
    assert "--model DIR" in line
    line = err(run_train("--task", "rte", "--model", tiny_model, "--output-dir", tmp_path / "i", check=False))
    assert "--data-dir" in line
    run_train("--task", "rte", *base, "--output-dir", tmp_path / "j")
    line = err(run_train("--task", "rte", *base, "--output-dir", tmp_path / "j", check=False))
    assert "--resume" in line  # refuses to overwrite a finished run


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "run"
    proc = run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--method", "full",
                     "--lr", 1e30, "--warmup-ratio", 0, "--max-grad-norm", 0, "--max-steps", 20, "--save-every", 1,
                     "--output-dir", out, *FAST, check=False)
    line = err(proc)
    assert proc.returncode == 3 and "non-finite" in line
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] >= 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
