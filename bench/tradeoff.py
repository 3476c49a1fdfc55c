"""Accuracy against training memory for depth-aware DynaLoRA (issue 11's trade-off curve), from the study's
committed records: the floor D at all, 3/4, 2/3, 1/2 and 1/4 of the layers, paired with LoRA over seeds.

  python bench/tradeoff.py                                   # STS-B, bench/results/study -> tradeoff_stsb.{md,png}
  python bench/tradeoff.py --task mrpc --records DIR
  python bench/tradeoff.py --seeds 0 1 2                     # only these seeds (default: every seed that finished)

Memory is the cost model each depth-aware run logs at step 0 (metrics.jsonl: saved-for-backward bytes plus
adapter gradients and AdamW state with the floor at each depth, measured on its first batch), as a fraction
of LoRA's (the floor at the bottom: every layer). Rows without a depth budget (LoRA, DynaLoRA-F) sit at the
bottom floor, 1.0 of it for LoRA by definition. The metric is the final dev value; the paired difference to
LoRA is over the seeds both rows finished, with a 95% t-interval (paired.py).
"""
import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired import paired_difference  # noqa: E402

ROWS = ["lora", "dynalora-f", "dynalora-d75", "dynalora-depth", "dynalora-d50", "dynalora-d25"]

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--task", default="stsb", help="GLUE task of the curve")
p.add_argument("--records", default=os.path.join("bench", "results", "study"), help="the study's record folder")
p.add_argument("--seeds", type=int, nargs="+", default=None,
               help="only these seeds, so that every row is over the same ones (default: every seed that finished)")
p.add_argument("--out", default=None, help="report prefix (default: RECORDS/tradeoff_TASK)")
args = p.parse_args()
if not os.path.isdir(args.records):
    print(f"error: no record folder at {args.records}", file=sys.stderr)
    sys.exit(2)
args.out = args.out or os.path.join(args.records, f"tradeoff_{args.task}")


def runs(method):
    """{seed: (results, first metrics line with a cost model or None)} of a row's finished runs."""
    out, root = {}, os.path.join(args.records, method, args.task)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if not (name.startswith("s") and name[1:].isdigit()) or not os.path.exists(os.path.join(root, name, "results.json")):
            continue
        if args.seeds is not None and int(name[1:]) not in args.seeds:
            continue
        with open(os.path.join(root, name, "results.json")) as f:
            res = json.load(f)
        cost = None
        with open(os.path.join(root, name, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                if "cost_model" in rec:
                    cost = rec
                    break
        with open(os.path.join(root, name, "args.json")) as f:
            res["args"] = json.load(f)
        out[int(name[1:])] = (res, cost)
    return out


data = {m: runs(m) for m in ROWS}
data = {m: r for m, r in data.items() if r}
if "lora" not in data:
    print(f"error: no finished LoRA run on {args.task} under {args.records}: nothing to pair with", file=sys.stderr)
    sys.exit(2)
costs = next((c["cost_model"] for r in data.values() for _, c in r.values() if c), None)
layers = len(costs) - 1 if costs else None
lora = {s: res["final"] for s, (res, _) in data["lora"].items()}
rows = []
for m, r in data.items():
    res0, cost0 = next(iter(r.values()))
    depth = cost0["max_depth"] if cost0 else layers
    active = res0["args"].get("active") or "all"
    frac = costs[depth]["total"] / costs[-1]["total"] if costs and depth is not None else math.nan
    finals = [res["final"] for res, _ in r.values()]
    d = paired_difference({s: res["final"] for s, (res, _) in r.items()}, lora) if m != "lora" else None
    rows.append(dict(method=m, depth=depth, active=active, frac=frac, mean=statistics.mean(finals),
                     std=statistics.stdev(finals) if len(finals) > 1 else math.nan, n=len(finals), d=d))
rows.sort(key=lambda row: (-(row["depth"] or 0), row["method"] != "lora"))

lines = [f"# Depth-aware trade-off on {args.task}: final dev metric against training memory", "",
         f"Built by `python bench/tradeoff.py --task {args.task}"
         f"{' --seeds ' + ' '.join(map(str, args.seeds)) if args.seeds else ''}` from the records in {args.records}. Memory: the "
         "cost model's saved-for-backward bytes + adapter gradients + AdamW state with the floor at D, as a fraction "
         "of LoRA's (floor at the bottom).", "",
         "| row | floor D (top layers) | active modules | memory / LoRA's | final (mean ± std) | seeds | − LoRA [95% CI] | p |",
         "|---|---|---|---|---|---|---|---|"]
for row in rows:
    d = row["d"]
    diff = "—" if d is None else (f"{d['mean']:+.2f}" + ("" if math.isnan(d["low"]) else f" [{d['low']:+.2f}, {d['high']:+.2f}]"))
    pv = "—" if d is None or math.isnan(d["p"]) else f"{d['p']:.3f}"
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.2f}"
    lines.append(f"| {row['method']} | {row['depth']} of {layers} | {row['active']} | {row['frac']:.3f} | "
                 f"{row['mean']:.2f}{std} | {row['n']} | {diff} | {pv} |")
with open(args.out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
fig, ax = plt.subplots(figsize=(6, 4))
for row in rows:
    ax.errorbar([row["frac"]], [row["mean"]], yerr=[0 if math.isnan(row["std"]) else row["std"]], fmt="o", capsize=3,
                color="black" if row["method"] == "lora" else "tab:blue")
    ax.annotate(f"{row['method']} (D={row['depth']}, {row['active']})", (row["frac"], row["mean"]), fontsize=7,
                xytext=(4, 4), textcoords="offset points")
ax.margins(x=0.25)  # room for the labels of the rows at 1.0
ax.set_xlabel("training memory / LoRA's (cost model)")
ax.set_ylabel(f"{args.task} final dev metric (mean ± std over seeds)")
ax.set_title(f"Depth-aware DynaLoRA on {args.task}: accuracy against memory", fontsize=9)
fig.tight_layout()
fig.savefig(args.out + ".png", dpi=130)
print(f"wrote {args.out}.md and {args.out}.png")
