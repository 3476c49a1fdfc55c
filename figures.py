"""The figures of a run, drawn from the files the run wrote (args.json, metrics.jsonl, selection.csv):

- selection.png: the fraction of training steps each adapter module was active, layers x module types, the
  value in every cell (DynaLoRA paper Figs. 4-5, HeteroLoRA Fig. 4), a depth budget's floor as a red line.
  selection.csv holds the same numbers.
- loss.png: train loss (mean over each --log-every window) and eval loss against steps, with the
  re-allocation steps marked (DynaLoRA paper Fig. 1 draws the eval loss).

train.py calls write_selection_csv and draw at the end of a run; `python figures.py RUN_DIR ...` redraws both
from a finished run's folder.
"""
import json
import math
import os
import re
import sys

import lora


def write_selection_csv(path, fractions, targets):
    """selection.csv: `fractions` {module path: fraction of steps active} as rows of layers, columns of module
    types; `targets`: short name -> regex on the module path (lora.TARGETS, then shortcuts.TARGETS)."""
    kinds = [k for k in targets if any(re.search(targets[k], n) for n in fractions)]
    grid = {}
    for n, f in fractions.items():
        layer = lora.layer_index(n)  # layer.N (BERT/RoBERTa) or layers.N (decoders)
        grid[layer, next(k for k in kinds if re.search(targets[k], n))] = f
    layers = sorted({layer for layer, _ in grid})
    with open(path + ".tmp", "w") as f:
        f.write("layer," + ",".join(kinds) + "\n")
        for layer in layers:
            f.write(f"{layer}," + ",".join(f"{grid.get((layer, k), float('nan')):.4f}" for k in kinds) + "\n")
    os.replace(path + ".tmp", path)


def read_selection_csv(path):
    """(layers, kinds, rows of fractions) from selection.csv."""
    with open(path) as f:
        lines = [line.strip().split(",") for line in f if line.strip()]
    kinds = lines[0][1:]
    return [int(r[0]) for r in lines[1:]], kinds, [[float(x) for x in r[1:]] for r in lines[1:]]


def describe(args, n_modules=None):
    """A short name of the run for titles, from its args.json: 'stsb, DynaLoRA 8 of 12 (forward, discounted)'."""
    method = {"lora": "LoRA", "vera": "VeRA", "full": "full FT", "bitfit": "BitFit"}.get(args["method"], args["method"])
    if args.get("active") is not None:
        method = f"Dyna{method} {args['active']}{f' of {n_modules}' if n_modules else ''}"
    elif args.get("threshold") is not None:
        method = f"Dyna{method} threshold {args['threshold']:g}"
    elif args.get("param_budget") is not None:  # HeteroLoRA's setting: a budget in parameters
        method = f"Dyna{method} {args['param_budget']:,} params"
    if any(args.get(k) is not None for k in ("active", "threshold", "param_budget")):
        method += f" ({args['importance']}, {args['allocator']}{', static' if args.get('schedule') == 'static' else ''})"
    return f"{args['task']}, {method}"


def plt_agg():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_selection(csv_path, png_path, subtitle="", max_depth=None):
    """selection.png from selection.csv: a cell per (layer, module type), its value printed in it; with a depth
    budget (`max_depth`: only the top layers may train) a red line marks its floor."""
    plt = plt_agg()
    layers, kinds, rows = read_selection_csv(csv_path)
    cell_w, cell_h = 0.78, 0.34  # inches: wide enough for "0.67" and "attn_out" at 9 pt
    fig_w = max(3.6, 1.0 + cell_w * len(kinds) + 1.2)
    fig, ax = plt.subplots(figsize=(fig_w, 1.4 + cell_h * len(layers)), layout="constrained")
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")  # viridis is light at the top
    ax.set_xticks(range(len(kinds)), kinds, fontsize=9, rotation=30 if len(kinds) > 3 else 0,
                  ha="right" if len(kinds) > 3 else "center")
    ax.set_yticks(range(len(layers)), layers, fontsize=9)
    if max_depth is not None and max_depth < len(layers):  # the rows below the line are the top max_depth layers
        floor_y = len(layers) - max_depth - 0.5
        ax.axhline(floor_y, color="red", lw=2)
        ax.text(len(kinds) - 0.5, floor_y, f"floor: top {max_depth} layers ", color="red", fontsize=8, ha="right",
                va="bottom")
    ax.set_xlabel("module type")
    ax.set_ylabel("layer")
    ax.set_title(f"Fraction of steps active\n{subtitle}" if subtitle else "Fraction of steps active", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8 if len(layers) > 4 else 1.0, label="fraction of training steps")
    fig.savefig(png_path, dpi=150)
    plt.close(fig)


def plot_loss(metrics_path, png_path, title=""):
    """loss.png: train loss per --log-every window and eval loss at each eval against steps; dashed lines at
    the steps where the active set was chosen again."""
    plt = plt_agg()
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    reallocs = [r["step"] for r in rows if "active" in r and r["step"] > 0]
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for i, s in enumerate(reallocs):
        ax.axvline(s, color="0.6", lw=0.8, ls="--", zorder=0, label="re-allocation" if i == 0 else None)
    if train:
        ax.plot(*zip(*train), lw=1.0, color="tab:blue", alpha=0.8, label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", ms=4, lw=1.5, color="tab:orange", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if train or evals or reallocs:  # a log restarted at the last step on resume holds no rows
        ax.legend(fontsize=8, frameon=False)
    fig.savefig(png_path, dpi=150)
    plt.close(fig)


def draw(run_dir, max_depth=None):
    """(Re)draw loss.png and, for a DynaLoRA/DynaVeRA run, selection.png in `run_dir` from its files. `max_depth`:
    the depth budget's floor to draw (default: results.json's, if the run has finished)."""
    with open(os.path.join(run_dir, "args.json")) as f:
        args = json.load(f)
    if max_depth is None and os.path.exists(os.path.join(run_dir, "results.json")):
        with open(os.path.join(run_dir, "results.json")) as f:
            max_depth = json.load(f).get("max_depth")
    csv_path = os.path.join(run_dir, "selection.csv")
    n = sum(not math.isnan(v) for row in read_selection_csv(csv_path)[2] for v in row) if os.path.exists(csv_path) else None
    plot_loss(os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "loss.png"), describe(args, n))
    if n is not None:
        plot_selection(csv_path, os.path.join(run_dir, "selection.png"), describe(args, n), max_depth)


if __name__ == "__main__":
    if len(sys.argv) < 2 or any(a.startswith("-") for a in sys.argv[1:]):
        print("usage: python figures.py RUN_DIR [RUN_DIR ...]  (redraws loss.png and selection.png)", file=sys.stderr)
        sys.exit(2)
    for d in sys.argv[1:]:
        if not os.path.exists(os.path.join(d, "metrics.jsonl")) or not os.path.exists(os.path.join(d, "args.json")):
            print(f"error: {d} holds no run (args.json and metrics.jsonl)", file=sys.stderr)
            sys.exit(2)
        draw(d)
        print(f"wrote {os.path.join(d, 'loss.png')}")
