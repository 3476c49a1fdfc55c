"""Training step time of LoRA, importance tracking, DynaLoRA (global and local optimizer, forward and gradient
importance, the paper's placement and depth-aware) and DynaVeRA on RoBERTa-base.

A step is what train.py does per batch: forward with loss, backward, gradient clipping (max norm 1), optimizer
step, LR scheduler step, zero_grad, and for the dynamic configurations the allocation holder's per-step call
(`allocate.Allocation.step`). All configurations are built once, each its own model copy, and timed
interleaved in one process (A B C ... A B C ...) on the same random batch, so that the machine's load drifts
over all of them alike; the tables give the median and min-max over the timed rounds, ratios of medians
against LoRA with tracking off, and, as a check on noise, the median of the per-round paired ratios.

Re-allocation (every --period steps in training) is timed honestly without running 50-step blocks: after each
timed step of a dynamic configuration, the allocation holder is called once more with a due step number, which
really re-allocates (reads the scores, draws with the discounted allocator, flips `set_active`). That call is
timed separately and 1/period of its median is added to the step median. The next timed step then runs on the
new allocation, so the timed steps cover the placements the allocator really chooses, not one lucky draw.

Depth-aware DynaLoRA (train.py --max-depth D): the same allocator choosing among the modules of the top D layers
only, D the smallest depth holding K modules (8 of 12 layers for 16/24, 4 for 8/24), timed in the same rounds.

  python bench/speed.py                 # RoBERTa-base, batch 16, seq 128 (under 10 minutes on 2 CPU cores)
  python bench/speed.py --quick --json s.json
  torchrun --standalone --nproc-per-node 2 bench/speed.py --ddp    # gradient averaging over 2 processes (gloo on CPU)
"""
import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

# Before torch starts OpenMP: waiting threads sleep instead of spinning. On this shared 2-core machine a thread
# spinning at a barrier for a descheduled sibling made steps ~5x slower. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the flat repo root
import allocate  # noqa: E402
import importance  # noqa: E402
import lora  # noqa: E402
import vera  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default 16; --quick: 8)")
p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128; --quick: 64)")
p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12 = RoBERTa-base; --quick: 4)")
p.add_argument("--reps", type=int, default=None, help="timed rounds over all configurations (default 6; --quick: 5)")
p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; --quick: 1)")
p.add_argument("--active", type=int, default=16, help="DynaLoRA/DynaVeRA budget K of 24 modules (scaled to --layers)")
p.add_argument("--depth-active", default="16,8", help="depth-aware DynaLoRA budgets K of 24 modules (scaled), comma-separated")
p.add_argument("--period", type=int, default=50, help="steps between re-allocations (periodic schedule)")
p.add_argument("--vera-r", type=int, default=1024, help="VeRA rank r")
p.add_argument("--vera-reference", action="store_true", help="also time plain VeRA 24/24 (one more config per round)")
p.add_argument("--quick", action="store_true", help="under a minute: 4 layers, batch 8, seq 64, 5 rounds (flags still override)")
p.add_argument("--seed", type=int, default=0, help="seed for weights, tokens and the allocators")
p.add_argument("--device", default="auto", help="cpu or cuda (auto: cuda when present)")
p.add_argument("--json", default=None, help="also write every timing (seconds) to this JSON file")
p.add_argument("--ddp", action="store_true", help="under torchrun: time gradient averaging (flattened all_reduce vs DDP rebuilt) instead")
args = p.parse_args()

quick = dict(batch_size=8, seq_len=64, layers=4, reps=5, warmup=1)
full = dict(batch_size=16, seq_len=128, layers=12, reps=6, warmup=1)
for k, v in (quick if args.quick else full).items():
    if getattr(args, k) is None:
        setattr(args, k, v)
for k in ("batch_size", "seq_len", "layers", "reps", "period"):
    if getattr(args, k) < 1:
        p.error(f"--{k.replace('_', '-')} must be >= 1")
if args.warmup < 0:
    p.error("--warmup must be >= 0")
if args.seq_len > 510:
    p.error("--seq-len must be <= 510 (RobertaConfig() has 512 positions, two taken by the padding offset)")
device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                      "cpu" if args.device == "auto" else args.device)
cuda = device.type == "cuda"
M = 2 * args.layers
K = max(1, min(M, round(args.active * M / 24)))
DEPTH_K = {int(k): max(1, min(M, round(int(k) * M / 24))) for k in args.depth_active.split(",")}  # of 24 -> of M
t_start = time.time()
load_start = os.getloadavg()[0]


def progress(msg):
    print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def now():
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter()


g = torch.Generator().manual_seed(args.seed)
ids = torch.randint(3, 50265, (args.batch_size, args.seq_len), generator=g)
batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
         "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device)}


class Config:
    """One configuration: its own model, adapters, optimizer, scheduler and (dynamic) allocation holder."""

    def __init__(self, key, label, method, tracking=None, dynamic=False, optimizer="global", measure="forward",
                 k=None, depth_aware=False):
        from transformers import RobertaConfig, RobertaForSequenceClassification
        self.key, self.label = key, label
        torch.manual_seed(args.seed)
        self.model = RobertaForSequenceClassification(RobertaConfig(num_labels=2, num_hidden_layers=args.layers))
        if method == "lora":  # the LoRA paper's RoBERTa-base settings: r=8, alpha=8, lr 5e-4
            self.adapters = lora.inject(self.model, "query,value", lambda lin: lora.LoRALinear(lin, r=8, alpha=8.0))
            lr = head_lr = 5e-4
        else:  # VeRA's RoBERTa-base settings (RTE)
            self.adapters = vera.inject_vera(self.model, "query,value", r=args.vera_r)
            lr, head_lr = 4e-3, 1e-2
        self.model.to(device).train()
        head = lora.head_parameters(self.model)
        self.trained = [q for a in self.adapters.values() for q in a.adapter_params()] + head
        self.optimizer, self.scheduler = allocate.build_optimizer(
            optimizer, self.adapters, head, lr=lr, head_lr=head_lr, total_steps=10 ** 6, warmup_steps=0)
        self.alloc = None
        self.measure = measure
        if dynamic:  # DynaLoRA /F (or /B): discounted stochastic allocator, periodic schedule
            eligible = None
            if depth_aware:  # only the modules of the fewest top layers that hold k
                depth = allocate.min_depth(list(self.adapters), k)
                eligible, self.label = allocate.top_layers(list(self.adapters), depth), f"{label}: top {depth} layers"
            self.alloc = allocate.Allocation(list(self.adapters), allocator="discounted", budget=k or K, measure=measure,
                                             schedule="periodic", period=args.period, seed=args.seed, eligible=eligible)
            self.alloc.initial(self.adapters, None)  # uniform first draw; train.py probes, which is not timed either
        importance.set_tracking(self.adapters, tracking or (measure if dynamic else "random"))  # random: all off
        self.n = 0  # optimizer steps done
        self.times, self.realloc_times, self.lowest = [], [], []

    def step(self):
        """One training step as train.py runs it; returns its wall time in seconds."""
        t0 = now()
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in self.trained if q.grad is not None], 1.0)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.n += 1
        if self.alloc is not None:
            if allocate.due("periodic", self.n, args.period):
                self.n += 1  # keep the timed call an ordinary one; re-allocation is timed in reallocate()
            self.alloc.step(self.n, self.adapters)
        return now() - t0

    def reallocate(self):
        """The due call of the allocation holder (a real re-allocation); returns its wall time in seconds."""
        due = (self.n // args.period + 1) * args.period
        t0 = now()
        if self.measure in importance.PARTIAL:  # as train.py: first measure every module on one batch
            importance.probe(self.model, self.adapters, [batch], self.measure, keep=True, only=self.alloc.eligible)
        active = self.alloc.step(due, self.adapters)
        t = now() - t0
        assert active is not None, "the due call did not re-allocate"
        self.n = due
        return t

    def lowest_active_layer(self):
        return min(int(re.search(r"\.layer\.(\d+)\.", n).group(1)) for n in self.alloc.active)


# ----------------------------------------------------------------------------- --ddp: the cost of averaging gradients


def ddp_mode():
    """Under torchrun: the per-step cost of averaging DynaLoRA's gradients over the ranks, two ways.

    Every rank holds three copies of DynaLoRA K/M (the same model, allocator and batch) and times, interleaved:
    a step with no averaging (what each rank costs alone), a step followed by train.py's one flattened all_reduce of
    the active adapters' and the head's gradients (distributed.all_reduce_grads), and a step through
    DistributedDataParallel, which all-reduces in buckets during backward. DDP buckets the parameters that require
    grad when it is built, so it is rebuilt after each re-allocation: that rebuild is timed apart (with init_sync=False,
    since the weights are already equal on every rank; the default also broadcasts every parameter and buffer, timed
    too) and 1/period of it is added to DDP's step."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from transformers import RobertaConfig, RobertaForSequenceClassification
    import distributed
    rank, world, _ = distributed.setup("cpu" if not cuda else "cuda")
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    local_batch = {k: v.to(dev) for k, v in batch.items()}

    class Run:
        def __init__(self, mode):
            torch.manual_seed(args.seed)
            self.mode = mode
            self.model = RobertaForSequenceClassification(RobertaConfig(num_labels=2, num_hidden_layers=args.layers))
            self.adapters = lora.inject(self.model, "query,value", lambda lin: lora.LoRALinear(lin, r=8, alpha=8.0))
            self.model.to(dev).train()
            self.head = lora.head_parameters(self.model)
            self.optimizer, self.scheduler = allocate.build_optimizer(
                "global", self.adapters, self.head, lr=5e-4, total_steps=10 ** 6, warmup_steps=0)
            self.alloc = allocate.Allocation(list(self.adapters), "discounted", K, measure="forward",
                                             period=args.period, seed=args.seed)
            self.alloc.initial(self.adapters, None)
            importance.set_tracking(self.adapters, "forward")
            self.n, self.times, self.rebuilds, self.rebuilds_sync = 0, [], [], []
            self.ddp = self.rebuild() if mode == "ddp" else None

        def rebuild(self, init_sync=False):
            self.ddp = None
            gc.collect()
            return DistributedDataParallel(self.model, device_ids=[dev.index] if cuda else None, init_sync=init_sync)

        def trained(self):
            return [q for a in self.adapters.values() for q in a.adapter_params() if q.requires_grad] + self.head

        def step(self):
            dist.barrier()
            t0 = now()
            loss = (self.ddp or self.model)(**local_batch).loss
            loss.backward()
            if self.mode == "flat":
                distributed.all_reduce_grads(self.trained())
            torch.nn.utils.clip_grad_norm_(self.trained(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.n += 1
            if allocate.due("periodic", self.n, args.period):
                self.n += 1
            self.alloc.step(self.n, self.adapters)
            return now() - t0

        def reallocate(self):
            due = (self.n // args.period + 1) * args.period
            assert self.alloc.step(due, self.adapters) is not None
            self.n = due
            if self.mode == "ddp":
                for init_sync, out in ((True, self.rebuilds_sync), (False, self.rebuilds)):
                    dist.barrier()
                    t0 = now()
                    self.ddp = self.rebuild(init_sync)
                    out.append(now() - t0)

    runs = []
    for mode in ("alone", "flat", "ddp"):
        progress(f"rank {rank}: building {mode}")
        runs.append(Run(mode))
    for rnd in range(args.warmup + args.reps):
        if rank == 0:
            progress(f"round {rnd + 1}/{args.warmup + args.reps}{'' if rnd >= args.warmup else ' (warm-up)'}")
        for r in runs:
            gc.collect()
            t = r.step()
            if rnd >= args.warmup:
                r.times.append(t)
            r.reallocate()
    times = distributed.gather_object({r.mode: r.times for r in runs})  # the slowest rank sets each step's time
    rows = {}
    labels = {"alone": "no gradient averaging (one rank's share of the work)",
              "flat": "train.py: one flattened all_reduce of the active gradients",
              "ddp": "DistributedDataParallel, rebuilt after each re-allocation"}
    for r in runs:
        per_step = [max(t[r.mode][i] for t in times) for i in range(len(r.times))]
        rebuild = statistics.median(r.rebuilds) if r.rebuilds else 0.0
        rows[r.mode] = dict(label=labels[r.mode], times=per_step, median_step=statistics.median(per_step),
                            rebuild_median=rebuild, rebuild_sync_median=statistics.median(r.rebuilds_sync)
                            if r.rebuilds_sync else 0.0, median=statistics.median(per_step) + rebuild / args.period)
    distributed.cleanup()
    if rank != 0:
        return
    alone = rows["alone"]["median"]
    print("# bench/speed.py --ddp: per-step cost of averaging gradients over processes")
    print(f"{datetime.date.today().isoformat()}; {world} processes ({'nccl' if cuda else 'gloo'}), RoBERTa-base "
          f"architecture, {args.layers} layers, batch {args.batch_size} x seq {args.seq_len} per process, fp32, "
          f"DynaLoRA {K}/{M} q,v r=8, re-allocation every {args.period} steps; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()} per process; {args.warmup} warm-up and {args.reps} timed rounds; "
          f"wall time {time.time() - t_start:.0f} s")
    print()
    print(f"| gradient averaging | step median (s) | DDP rebuild median (ms) | step + rebuild/{args.period} (s) "
          f"| cost of averaging per step (s) | ratio vs no averaging |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows.values():
        rebuild = f"{1000 * r['rebuild_median']:.1f} ({1000 * r['rebuild_sync_median']:.1f} with init_sync)" \
            if r["rebuild_median"] else "-"
        print(f"| {r['label']} | {r['median_step']:.4f} | {rebuild} | {r['median']:.4f} | "
              f"{r['median'] - alone:.4f} | {r['median'] / alone:.3f} |")
    print()
    print("Each step's time is the slowest rank's. The rebuild column shows DDP's constructor without init_sync "
          "(weights already equal) and, in brackets, with it (it broadcasts every parameter and buffer first).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {**vars(args), "world_size": world, "modules": M, "budget": K}, "rows": rows}, f,
                      indent=1)


if args.ddp:
    ddp_mode()
    sys.exit(0)


specs = [
    ("lora", f"LoRA q,v r=8 ({M}/{M}), tracking off", "lora", None, False, "global"),
    ("lora_forward", "LoRA, forward importance tracking on", "lora", "forward", False, "global"),
    ("lora_gradient", "LoRA, gradient importance tracking on", "lora", "gradient", False, "global"),
    ("dynalora_global", f"DynaLoRA {K}/{M}, global optimizer", "lora", None, True, "global"),
    ("dynalora_local", f"DynaLoRA {K}/{M}, local optimizer", "lora", None, True, "local"),
    ("dynalora_gradient", f"DynaLoRA {K}/{M}, gradient importance (+ re-allocation probe)", "lora", None, True,
     "global", "gradient"),
]
for k24, k in DEPTH_K.items():
    specs.append((f"dynalora_depth{k24}", f"DynaLoRA {k}/{M}, depth-aware", "lora", None, True, "global", "forward", k,
                  True))
specs.append(("dynavera", f"DynaVeRA {K}/{M} (r={args.vera_r}), global optimizer", "vera", None, True, "global"))
if args.vera_reference:
    specs.append(("vera", f"VeRA q,v r={args.vera_r} ({M}/{M}), tracking off (reference)", "vera", None, False,
                  "global"))
configs = []
for spec in specs:
    progress(f"building {spec[1]}")
    configs.append(Config(*spec))

for rnd in range(args.warmup + args.reps):
    timed = rnd >= args.warmup
    progress(f"round {rnd + 1}/{args.warmup + args.reps}{'' if timed else ' (warm-up)'}")
    for c in configs:
        gc.collect()
        if c.alloc is not None and timed:
            c.lowest.append(c.lowest_active_layer())
        t = c.step()
        if timed:
            c.times.append(t)
        if c.alloc is not None:
            r = c.reallocate()
            if timed:
                c.realloc_times.append(r)

# ----------------------------------------------------------------------------- report
wall = time.time() - t_start
rows = {}
for c in configs:
    med = statistics.median(c.times)
    realloc = statistics.median(c.realloc_times) if c.realloc_times else 0.0
    rows[c.key] = dict(label=c.label, times=c.times, median_step=med, min=min(c.times), max=max(c.times),
                       realloc_times=c.realloc_times, realloc_median=realloc, median=med + realloc / args.period,
                       lowest_active_layer=c.lowest)
ref = rows["lora"]
for key, r in rows.items():
    r["ratio"] = r["median"] / ref["median"]
    # per-round paired ratio (same round, adjacent in time), with the amortised re-allocation added
    paired = [(t + r["realloc_median"] / args.period) / tr for t, tr in zip(r["times"], ref["times"])]
    r["paired_ratio_median"] = statistics.median(paired)
    r["paired_ratio_min"], r["paired_ratio_max"] = min(paired), max(paired)


def target(name, key, against, limit, what):
    """(name, ratio of medians, limit, what, per-round paired ratios) for one target."""
    a, b = rows[key], rows[against]
    paired = [(ta + a["realloc_median"] / args.period) / (tb + b["realloc_median"] / args.period)
              for ta, tb in zip(a["times"], b["times"])]
    return name, a["median"] / b["median"], limit, what, paired


tracking = "importance tracking costs <= 3% of a LoRA step"
targets = [
    target("forward tracking / LoRA", "lora_forward", "lora", 1.03, tracking),
    target("gradient tracking / LoRA", "lora_gradient", "lora", 1.03, tracking),
    target(f"DynaLoRA {K}/{M} global / LoRA {M}/{M}", "dynalora_global", "lora", 1.00, "DynaLoRA no slower than LoRA"),
    target(f"DynaLoRA {K}/{M} local / LoRA {M}/{M}", "dynalora_local", "lora", 1.00, "DynaLoRA no slower than LoRA"),
    target("DynaLoRA local / global", "dynalora_local", "dynalora_global", 1.02,
           "local optimizer (the same AdamW math per module, only the LR schedule differs) <= 2% over global"),
    target(f"DynaLoRA {K}/{M} gradient / forward importance", "dynalora_gradient", "dynalora_global", 1.03,
           "gradient importance with its re-allocation probe <= 3% over forward importance"),
]
if 16 in DEPTH_K:
    targets.append(target(f"depth-aware DynaLoRA {DEPTH_K[16]}/{M} / LoRA {M}/{M}", "dynalora_depth16", "lora", 0.85,
                          "depth-aware DynaLoRA 16/24 step time <= 0.85x LoRA's"))
import transformers  # noqa: E402

threads = torch.get_num_threads()
attn = configs[0].model.config._attn_implementation
print("# bench/speed.py: training step time")
print(f"{datetime.date.today().isoformat()}; RoBERTa-base architecture (RobertaConfig() defaults, random weights), "
      f"{args.layers} layers, num_labels=2, batch {args.batch_size} x seq {args.seq_len} random tokens (the same batch "
      f"for every config), fp32, train mode (dropout 0.1), targets query,value (M={M}); "
      f"DynaLoRA/DynaVeRA: K={K} active, forward importance, discounted allocator, periodic schedule every {args.period} steps; seed {args.seed}"
      f"{'; --quick (fewer layers, smaller batch and sequence, fewer rounds than the defaults)' if args.quick else ''}")
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, threads {threads} "
      f"(torch default, not set), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, attention {attn}, "
      f"python {platform.python_version()}, {platform.machine()} "
      f"{os.cpu_count()} logical CPUs; wall time {wall:.0f} s; 1-min load average {load_start:.1f} at start, "
      f"{os.getloadavg()[0]:.1f} at end (this run alone makes about {torch.get_num_threads()}; more = shared CPUs)")
print(f"step = forward + backward + clip_grad_norm_ + optimizer.step + scheduler.step + zero_grad + Allocation.step "
      f"(dynamic). {len(configs)} configs interleaved in one process, {args.warmup} warm-up round(s) then {args.reps} "
      f"timed rounds. Dynamic configs: the re-allocation call is timed apart and 1/{args.period} of its median is "
      f"added (column 'step + realloc/{args.period}'); each timed step runs on a fresh allocation from the real "
      f"allocator (all dynamic configs use allocator seed {args.seed}).")
print()
print(f"| configuration | step median (s) | min-max (s) | re-allocation median (ms) | step + realloc/{args.period} (s) "
      f"| ratio of medians vs LoRA | paired per-round ratio median (min-max) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows.values():
    realloc = f"{1000 * r['realloc_median']:.2f}" if r["realloc_times"] else "-"
    print(f"| {r['label']} | {r['median_step']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {realloc} | {r['median']:.3f} | "
          f"{r['ratio']:.3f} | {r['paired_ratio_median']:.3f} "
          f"({r['paired_ratio_min']:.3f}-{r['paired_ratio_max']:.3f}) |")
print()
print("| target | measured (ratio of medians) | limit | verdict | noise: per-round paired ratios min-max |")
print("|---|---:|---:|---|---:|")
for name, value, limit, what, paired in targets:
    print(f"| {what}: {name} | {value:.3f} | <= {limit:.2f} | {'MET' if value <= limit else 'MISSED'} | "
          f"{min(paired):.3f}-{max(paired):.3f} |")
print()
print("The verdict is computed from the medians alone; when the limit lies inside the paired min-max, the "
      "difference is within this machine's noise and the verdict could flip on a rerun.")
print(f"- Gradient importance: training measures output gradients only down to the lowest active module and adapter "
      f"gradients only for active ones, so before each re-allocation one probe batch (forward + backward with every "
      f"module active, no optimizer step) measures all; its cost is in the re-allocation column "
      f"({1000 * rows['dynalora_gradient']['realloc_median']:.0f} ms, 1/{args.period} of it per step).")
for key in ["dynalora_global", "dynalora_local", "dynalora_gradient", "dynavera"] + [f"dynalora_depth{k}" for k in DEPTH_K]:
    low = rows[key]["lowest_active_layer"]
    print(f"- {rows[key]['label']}: lowest active layer per timed step {low} (layer 0 = backward runs through "
          f"every layer, as in LoRA; higher = backward stops earlier).")
if "vera" in rows:
    print(f"- DynaVeRA {K}/{M} / VeRA {M}/{M}: {rows['dynavera']['median'] / rows['vera']['median']:.3f} "
          f"(ratio of medians).")
print("- Timings are wall-clock on a shared machine: read min-max and the paired ratios before trusting a 1-3% "
      "difference. No timing is asserted in any test.")
print()

if args.json:
    with open(args.json, "w") as f:
        json.dump({"config": {**vars(args), "modules": M, "budget": K, "device": str(device), "threads": threads,
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "date": datetime.date.today().isoformat(), "wall_time_s": wall,
                              "load_average_start": load_start, "load_average_end": os.getloadavg()[0]},
                   "rows": rows,
                   "targets": [dict(name=n, value=v, limit=lim, what=w, met=v <= lim, paired=pr)
                               for n, v, lim, w, pr in targets]},
                  f, indent=1)
