"""train.py's flags after argparse: each value checked against its domain, the per-task defaults filled in, the
flags that contradict each other refused, and which settings a --resume must repeat. Every check raises
FlagError with one line naming the flag, before anything is loaded or written.

  flags.check(args)                         # every numeric flag in its domain (DOMAINS), --targets, --device
  defaults = flags.apply_defaults(args, task)   # the papers' per-task batch size, epochs, lr, rank, alpha
  flags.check_combinations(args)            # one budget, depth budgets need an allocation, ...
  flags.resume_conflicts(saved, now)        # {flag: (checkpoint's, this run's)} of the settings that differ

A new numeric flag is one line in DOMAINS. None (not given: the default applies) is always allowed.
"""
import math
import os

import torch

import importance
import shortcuts


class FlagError(ValueError):
    """A flag outside its domain or contradicting another; the message is one line meant for the user."""


def _finite(v):
    return isinstance(v, int) or math.isfinite(v)


# flag -> (its domain in words, the test); floats must also be finite (argparse reads 'nan' and 'inf')
DOMAINS = {
    "rank": (">= 1", lambda v: v >= 1),
    "alpha": ("> 0", lambda v: v > 0),
    "d_initial": ("> 0", lambda v: v > 0),
    "vera_seed": ("in [0, 2^32)", lambda v: 0 <= v < 2**32),
    "dropout": ("in [0, 1)", lambda v: 0 <= v < 1),
    "active": (">= 1", lambda v: v >= 1),
    "threshold": ("in (0, 1]", lambda v: 0 < v <= 1),
    "param_budget": (">= 1", lambda v: v >= 1),
    "period": (">= 1", lambda v: v >= 1),
    "period_epochs": ("> 0", lambda v: v > 0),
    "realloc_at": (">= 1", lambda v: v >= 1),
    "max_depth": (">= 1 (layers counted from the top)", lambda v: v >= 1),
    "memory_budget": ("a fraction of LoRA's training memory, in (0, 1]", lambda v: 0 < v <= 1),
    "probe_batches": (">= 0", lambda v: v >= 0),
    "lr": ("> 0", lambda v: v > 0),
    "head_lr": ("> 0", lambda v: v > 0),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "max_grad_norm": (">= 0 (0: off)", lambda v: v >= 0),
    "epochs": ("> 0", lambda v: v > 0),
    "max_steps": (">= 1", lambda v: v >= 1),
    "batch_size": (">= 1", lambda v: v >= 1),
    "grad_accum": (">= 1", lambda v: v >= 1),
    "eval_batch_size": (">= 1", lambda v: v >= 1),
    "max_len": (">= 1", lambda v: v >= 1),
    "warmup_ratio": ("in [0, 1)", lambda v: 0 <= v < 1),
    "eval_every": (">= 0 (0: once per epoch)", lambda v: v >= 0),
    "save_every": (">= 0 (0: only at the end)", lambda v: v >= 0),
    "log_every": (">= 1", lambda v: v >= 1),
    "max_train_samples": (">= 1", lambda v: v >= 1),
    "max_eval_samples": (">= 1", lambda v: v >= 1),
    "seed": ("in [0, 2^32)", lambda v: 0 <= v < 2**32),
}


def check(args):
    """Every DOMAINS flag in its domain, --targets without repeats, --device one this machine has."""
    for name, (domain, ok) in DOMAINS.items():
        v = getattr(args, name)
        if v is not None and not (_finite(v) and ok(v)):
            raise FlagError(f"--{name.replace('_', '-')} must be {domain}{'' if _finite(v) else ' and finite'}, got {v}")
    if args.targets is not None:
        names = [t.strip() for t in args.targets.split(",")]
        if "" in names:
            raise FlagError(f"--targets {args.targets!r} has an empty entry")
        repeated = sorted({t for t in names if names.count(t) > 1})
        if repeated:
            raise FlagError(f"--targets names {', '.join(repeated)} more than once")
        if "all" in names and len(names) > 1:
            raise FlagError(f"--targets all already holds every target; got {args.targets}")
    check_device(args.device)


def check_device(name):
    """`name` is auto, or a device this machine has (torchrun picks the GPU by LOCAL_RANK, not by the index)."""
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FlagError(f"--device {name} is not a device name (cpu, cuda, cuda:1, mps, auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                        f"use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FlagError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FlagError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FlagError(f"--device {name}: train.py runs on cpu, cuda or mps")


# per-task defaults from the papers (RoBERTa-base): LoRA Table 9 (r=8, alpha=8), VeRA Table 8 (r=1024)
LORA_DEFAULTS = dict(sst2=(16, 60, 5e-4), mrpc=(16, 30, 4e-4), cola=(32, 80, 4e-4), qnli=(32, 25, 4e-4),
                     rte=(32, 80, 5e-4), stsb=(16, 40, 4e-4), mnli=(16, 30, 5e-4), qqp=(16, 25, 5e-4))
VERA_DEFAULTS = dict(sst2=(64, 60, 4e-3, 4e-3), mrpc=(64, 30, 1e-2, 4e-3), cola=(64, 80, 1e-2, 1e-2),
                     qnli=(64, 25, 1e-2, 4e-3), rte=(64, 160, 4e-3, 1e-2), stsb=(64, 80, 1e-2, 1e-2))
OTHER_DEFAULTS = dict(full=(16, 10, 2e-5), bitfit=(32, 20, 1e-3))  # not from the DynaLoRA paper: common choices


def apply_defaults(args, task):
    """Fill the flags left unset with the method's per-task defaults; returns those defaults."""
    if args.method == "lora":
        bs, ep, lr = LORA_DEFAULTS.get(task, (32, 10, 5e-4))
        defaults = dict(batch_size=bs, epochs=ep, lr=lr, rank=8, alpha=8.0)  # LoRA trains the head at --lr
    elif args.method == "vera":
        bs, ep, lr, hlr = VERA_DEFAULTS.get(task, (64, 30, 1e-2, 4e-3))
        defaults = dict(batch_size=bs, epochs=ep, lr=lr, head_lr=hlr, rank=1024, alpha=None)
    else:
        bs, ep, lr = OTHER_DEFAULTS[args.method]
        defaults = dict(batch_size=bs, epochs=ep, lr=lr, rank=None, alpha=None)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.head_lr is None:
        args.head_lr = args.lr
    return defaults


def check_combinations(args):
    """Flags that contradict each other, or that need another one."""
    dynamic = args.active is not None or args.threshold is not None or args.param_budget is not None
    if sum(b is not None for b in (args.active, args.threshold, args.param_budget)) > 1:
        raise FlagError("--active, --threshold and --param-budget are three budgets; give one")
    if shortcuts.split_targets(args.targets or "")[1] and args.method != "lora":
        raise FlagError(f"{','.join(shortcuts.TARGETS)} are LoRA-adapted shortcuts (HeteroLoRA); they need --method lora")
    if args.method == "vera" and args.importance in importance.ZERO_B:
        raise FlagError(f"--importance {args.importance} scores LoRA's A and B; VeRA's lambda_b = 0 at init would "
                        f"score every module 0")
    if dynamic and args.method not in ("lora", "vera"):
        raise FlagError(f"--active/--threshold allocate adapter modules; --method {args.method} has none")
    if (args.max_depth is not None or args.memory_budget is not None) and not dynamic:
        raise FlagError("--max-depth/--memory-budget limit where the allocated modules lie; give --active K or "
                        "--threshold P")
    if args.max_depth is not None and args.memory_budget is not None:
        raise FlagError("--max-depth and --memory-budget are two depth budgets; give one")


# settings that say where files are, not what the run is: a --resume may spell or move them differently. The model
# and the data are compared by content instead (hub.fingerprint; a checkpoint written before fingerprints: by path)
PLACES = {"output_dir", "data_dir", "model"}
FREE = {"resume", "device", "no_progress", "save_every", "eval_batch_size"}  # change nothing that is trained


def resume_conflicts(saved, now, default, fingerprinted=True):
    """{flag: (checkpoint's value, this run's)} for the settings of the run that differ; `default(flag)` stands in
    for a flag newer than the checkpoint."""
    def same(k, a, b):
        if k == "output_dir" or (k in PLACES and fingerprinted):
            return True
        return a == b or (k in PLACES and None not in (a, b) and os.path.realpath(a) == os.path.realpath(b))
    return {k: (saved.get(k, default(k)), v) for k, v in now.items()
            if k not in FREE and not same(k, saved.get(k, default(k)), v)}
