"""Which adapter modules train, when, and with which optimizer (DynaLoRA, Brouwers et al. 2024, sections 3.2-3.4).

Holds:
- Allocators (3.2), plain functions (scores, budget, generator, counts=None) -> sorted module indices:
  `topk`, `threshold`, `multinomial` (the paper's "stochastic"), `discounted` ("discounted stochastic",
  eq. 3) and `uniform` (random selection, the paper's "R"). Random ones draw from a seeded CPU generator.
- Parameter budgets (HeteroLoRA, Zhang et al. 2024, compares at equal trainable parameters and modules differ
  in size): `ORDERS` gives each allocator but threshold as a full priority order over the modules, and
  `by_params` takes modules in that order while their adapter parameters fit the budget.
- Schedules (3.3): `due(schedule, step, period, realloc_at)`, `once`, `periodic` or `static` (HeteroLoRA's
  static search: the allocation before step 0 is the only one).
- `apply`: flips each adapter through `set_active`; the active set is a plain list of module names.
- Depth (depth-aware allocation): `layer_of` a module, `top_layers` (the modules of the top D layers, the
  eligible set under a depth budget), `min_depth` (the fewest top layers holding k modules) and `depth`
  (the layers backward runs through for an active set).
- `Allocation`: the per-step bookkeeping train.py calls right after `optimizer.step()`.
- Optimizers (3.4): `build_optimizer` gives one `global` torch.optim.AdamW over every adapter parameter
  (active or not) and the head, or `local` AdamW state and LR schedule per module (`LocalAdamW`). Both keep
  each module's Adam state while it is inactive (torch's AdamW is per-parameter); they differ only in the
  LR schedule.
- `selection_fractions`: the share of steps each module was trained, from the allocation history.
"""
import math
import numbers

import torch

import importance
import lora

SCHEDULES = ("once", "periodic", "static")
OPTIMIZERS = ("global", "local")


# ----------------------------------------------------------------------------- allocators (3.2)

def _host(x):
    """Scores or counts as a 1-D float64 CPU tensor; callers have already paid for the one host read."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-D tensor, one per module, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all() or (x < 0).any():
        raise ValueError("scores and counts must be finite and non-negative")
    return x


def check_k(k, m):
    if isinstance(k, bool) or not isinstance(k, numbers.Real) or not 1 <= k <= m or k != int(k):
        raise ValueError(f"the budget k must be an integer from 1 to the number of modules ({m}), got {k}")
    return int(k)


def check_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ValueError(f"the threshold p must be in (0, 1], got {p}")
    return float(p)


def check_budget(allocator, budget, m):
    if allocator not in ALLOCATORS:
        raise ValueError(f"unknown allocator '{allocator}'; choose from {', '.join(ALLOCATORS)}")
    return check_p(budget) if allocator == "threshold" else check_k(budget, m)


def _sample(weights, k, generator):
    """k indices without replacement, probability proportional to weight (successive draws, as torch.multinomial).
    When fewer than k weights are positive, the rest are drawn uniformly from the zero-weight modules."""
    positive = (weights > 0).nonzero().flatten()
    if len(positive) >= k:
        return torch.multinomial(weights, k, replacement=False, generator=generator)
    rest = (weights <= 0).nonzero().flatten()
    return torch.cat([positive, rest[torch.randperm(len(rest), generator=generator)[:k - len(positive)]]])


def topk(scores, budget, generator=None, counts=None):
    """The k modules with the highest scores; ties go to the lower index."""
    s = _host(scores)
    k = check_k(budget, len(s))
    return sorted(torch.sort(s, descending=True, stable=True).indices[:k].tolist())


def threshold(scores, budget, generator=None, counts=None):
    """The smallest set of highest-scoring modules whose normalised importance (eq. 2) sums to at least p."""
    s = _host(scores)
    p = check_p(budget)
    share = importance.normalize(s)
    order = torch.sort(share, descending=True, stable=True).indices
    n = int((share[order].cumsum(0) < p - 1e-12).sum()) + 1  # 1e-12: rounding must not keep p = 1 from being reached
    return sorted(order[:min(n, len(s))].tolist())


def multinomial(scores, budget, generator=None, counts=None):
    """k modules without replacement, each draw with probability proportional to the normalised score (eq. 2)."""
    s = _host(scores)
    k = check_k(budget, len(s))
    return sorted(_sample(importance.normalize(s), k, generator).tolist())


def _discounted_weights(s, counts):
    """The discounted allocator's draw weights: the normalised score divided by C = 1 + n_updates (eq. 3)."""
    if counts is None:
        raise ValueError("the discounted allocator needs counts (each module's n_updates)")
    c = _host(counts)
    if c.shape != s.shape:
        raise ValueError(f"counts has shape {tuple(c.shape)}, scores {tuple(s.shape)}; need one of each per module")
    return importance.discount(importance.normalize(s), c)


def discounted(scores, budget, generator=None, counts=None):
    """As multinomial, on the normalised score divided by C = 1 + n_updates (eq. 3): favours rarely trained modules."""
    s = _host(scores)
    k = check_k(budget, len(s))
    return sorted(_sample(_discounted_weights(s, counts), k, generator).tolist())


def uniform(scores, budget, generator=None, counts=None):
    """k modules uniformly at random without replacement; the scores only give the number of modules."""
    m = len(_host(scores))
    k = check_k(budget, m)
    return sorted(torch.randperm(m, generator=generator)[:k].tolist())


ALLOCATORS = {"topk": topk, "threshold": threshold, "multinomial": multinomial,
              "discounted": discounted, "uniform": uniform}


# ----------------------------------------------------------------------------- parameter budgets

# allocator -> (scores, generator, counts) -> every module index, most preferred first: what the allocator
# would pick for k = 1, 2, ..., M (the random ones draw successively without replacement, as for a fixed k)
ORDERS = {
    "topk": lambda s, g, c: torch.sort(_host(s), descending=True, stable=True).indices.tolist(),
    "multinomial": lambda s, g, c: _sample(importance.normalize(_host(s)), len(_host(s)), g).tolist(),
    "discounted": lambda s, g, c: _sample(_discounted_weights(_host(s), c), len(_host(s)), g).tolist(),
    "uniform": lambda s, g, c: torch.randperm(len(_host(s)), generator=g).tolist(),
}


def check_param_budget(budget, sizes):
    """sizes: trainable adapter parameters of each module. The budget must hold at least the smallest module."""
    if not sizes or any(not _is_int_at_least(n, 1) for n in sizes):
        raise ValueError(f"module sizes must be positive integers, one per module, got {sizes}")
    if not _is_int_at_least(budget, min(sizes)):
        raise ValueError(f"the parameter budget must be an integer of at least the smallest module's {min(sizes):,} "
                         f"adapter parameters, got {budget}")
    return int(budget)


def by_params(order, sizes, budget):
    """Walk `order` and take each module whose parameters still fit in `budget`: never more than `budget` in
    all, and no module left out would fit. Returns the sorted indices."""
    chosen, used = [], 0
    for i in order:
        if used + sizes[i] <= budget:
            chosen.append(i)
            used += sizes[i]
    return sorted(chosen)


# ----------------------------------------------------------------------------- schedules (3.3)

def _is_int_at_least(n, low):
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= low


def check_schedule(schedule, period, realloc_at):
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}'; choose from {', '.join(SCHEDULES)}")
    if schedule == "periodic" and not _is_int_at_least(period, 1):
        raise ValueError(f"the periodic schedule needs an integer period >= 1, got {period}")
    if schedule == "once" and not _is_int_at_least(realloc_at, 1):
        raise ValueError(f"the once schedule needs an integer realloc_at >= 1, got {realloc_at}")


def due(schedule, step, period=None, realloc_at=None):
    """Re-allocate now? `step` = optimizer steps completed. The allocation at step 0 is `Allocation.initial`."""
    check_schedule(schedule, period, realloc_at)
    if schedule == "static":
        return False
    if schedule == "once":
        return step == realloc_at
    return step > 0 and step % period == 0


# ----------------------------------------------------------------------------- the active set

def apply(adapters, names):
    """Make exactly the modules in `names` active (trained), through each adapter's `set_active`."""
    chosen = set(names)
    unknown = sorted(chosen - set(adapters))
    if unknown:
        raise ValueError(f"no adapter module named {unknown[:3]}")
    for name, a in adapters.items():
        a.set_active(name in chosen)


def active_names(adapters):
    return [name for name, a in adapters.items() if a.active]


# ----------------------------------------------------------------------------- depth

def layer_of(name):
    """The layer index in a module path such as roberta.encoder.layer.3.attention.self.query (lora.layer_index)."""
    layer = lora.layer_index(name)
    if layer < 0:
        raise ValueError(f"cannot tell the layer of module '{name}' (no '.layer.N.' or '.layers.N.' in its path)")
    return layer


def top_layers(names, depth):
    """The modules of `names` that lie in the top `depth` layers of those holding any of them, in their order."""
    layers = sorted({layer_of(n) for n in names})
    keep = set(layers[len(layers) - depth:]) if depth > 0 else set()
    return [n for n in names if layer_of(n) in keep]


def min_depth(names, k):
    """The smallest depth whose top layers hold at least k of the modules `names`: where depth-aware allocation
    of k modules has the least memory."""
    return next(d for d in range(1, len({layer_of(n) for n in names}) + 1) if len(top_layers(names, d)) >= k)


def depth(active, names):
    """How many of the layers holding `names` backward runs through for the active set `active`: from the
    layer of its lowest module to the top (0 for none). With the base frozen it stops below that module."""
    if not active:
        return 0
    low = min(layer_of(n) for n in active)
    return sum(layer >= low for layer in {layer_of(n) for n in names})


class Allocation:
    """Which modules train: chooses, applies and records the active set; plain data plus a CPU generator.

    `budget` is k (modules trained at a time) for every allocator but `threshold`, where it is p. With
    `param_budget` N and `sizes` (each module's trainable adapter parameters) instead, at most N adapter
    parameters are active at a time: `by_params` on the allocator's order (`ORDERS`; not `threshold`).
    Call `initial(adapters, scores)` before the first step, and `step(step, adapters)` right after every
    optimizer step. `active` is the current list of names, `history` the list of (step, names), `scores` the
    (host) scores the last allocation chose from, in module order (None for a uniform first allocation).
    With a PARTIAL importance measure, train.py calls importance.probe(..., keep=True) when `due(step)`,
    before `step`, so that every module has a fresh score.
    `eligible` (default: every module) is the set the allocator chooses from, by importance among them; a
    depth budget makes it the modules of the top D layers (`top_layers`). k counts against it, and
    threshold's shares (eq. 2) are taken over it.
    """

    def __init__(self, names, allocator, budget, measure="forward", schedule="periodic", period=50,
                 realloc_at=None, window="cumulative", seed=0, eligible=None, param_budget=None, sizes=None):
        self.names = list(names)
        chosen = set(self.names if eligible is None else eligible)
        if not chosen or chosen - set(self.names):
            raise ValueError("the eligible modules must be a non-empty subset of the module names, got "
                             f"{sorted(chosen - set(self.names))[:3] or 'none'}")
        self._pool = [i for i, n in enumerate(self.names) if n in chosen]  # indices the allocator draws from
        self.eligible = None if len(self._pool) == len(self.names) else [self.names[i] for i in self._pool]
        self.param_budget, self.sizes = None, None
        if param_budget is None:
            self.budget = check_budget(allocator, budget, len(self._pool))
        elif allocator not in ORDERS or budget is not None:
            raise ValueError(f"a parameter budget replaces k and works with {', '.join(ORDERS)}; got allocator "
                             f"'{allocator}' and budget {budget}")
        else:
            sizes = list(sizes) if sizes is not None else []
            if len(sizes) != len(self.names):
                raise ValueError(f"got {len(sizes)} module sizes for {len(self.names)} modules; need one per module")
            self.param_budget, self.budget = check_param_budget(param_budget, [sizes[i] for i in self._pool]), None
            self.sizes = [int(n) for n in sizes]
        importance.check_measure(measure)
        check_schedule(schedule, period, realloc_at)
        importance.check_window(window)
        if measure == "random" and allocator in ("topk", "threshold"):
            raise ValueError(f"importance 'random' scores every module 1, so '{allocator}' would always pick the "
                             "first modules; use uniform, multinomial or discounted")
        self.allocator, self.measure, self.schedule, self.window = allocator, measure, schedule, window
        self.period, self.realloc_at, self.seed = period, realloc_at, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.active, self.history, self.scores = [], [], None

    def config(self):
        return {"names": list(self.names), "allocator": self.allocator, "budget": self.budget, "measure": self.measure,
                "schedule": self.schedule, "period": self.period, "realloc_at": self.realloc_at,
                "window": self.window, "seed": self.seed, "eligible": self.eligible,
                "param_budget": self.param_budget, "sizes": self.sizes}

    def due(self, step):
        """Does the schedule re-allocate after optimizer step number `step`?"""
        return due(self.schedule, step, self.period, self.realloc_at)

    def _pick(self, scores, counts):
        """The allocator's choice among the eligible modules, as indices into `names`."""
        pool = torch.tensor(self._pool)
        if self.param_budget is not None:
            order = ORDERS[self.allocator](scores[pool], self.generator, counts[pool])
            return [self._pool[i] for i in by_params(order, [self.sizes[i] for i in self._pool], self.param_budget)]
        return [self._pool[i] for i in ALLOCATORS[self.allocator](scores[pool], self.budget, self.generator,
                                                                  counts[pool])]

    def _choose(self, step, adapters, idx, scores=None):
        self.active = [self.names[i] for i in idx]
        self.scores = None if scores is None else scores.tolist()
        apply(adapters, self.active)
        if self.window == "since_last":
            importance.reset(adapters)
        self.history.append((step, list(self.active)))
        return list(self.active)

    def initial(self, adapters, scores=None):
        """First allocation: from probe scores (importance.probe), or uniformly at random when scores is None."""
        if list(adapters) != self.names:
            raise ValueError("the adapters do not match the module names this Allocation was made for")
        if scores is None:
            m = len(self._pool)
            if self.param_budget is not None:
                order = ORDERS["uniform"](torch.ones(m), self.generator, None)
                idx = by_params(order, [self.sizes[i] for i in self._pool], self.param_budget)
                return self._choose(0, adapters, [self._pool[i] for i in idx])
            k = len(threshold(torch.ones(m), self.budget)) if self.allocator == "threshold" else self.budget
            return self._choose(0, adapters, [self._pool[i] for i in uniform(torch.ones(m), k, self.generator)])
        scores = torch.as_tensor(scores).cpu()
        if scores.shape != (len(self.names),):
            raise ValueError(f"got {tuple(scores.shape)} scores for {len(self.names)} modules; need one per module")
        return self._choose(0, adapters, self._pick(scores, importance.counts(adapters).cpu()), scores)

    def step(self, step, adapters, reallocate=True):
        """After optimizer step number `step` (1, 2, ...): count the update, re-allocate if due (and `reallocate`;
        train.py passes False after the last step, where a new choice would never train).

        Returns the new list of active names when it re-allocated, else None. Only a due step reads
        scores back to the host; every other step only adds 1 to device counters.
        """
        for name in self.active:
            adapters[name].n_updates += 1  # C in eq. 3
        if not (reallocate and self.due(step)):
            return None
        scores = importance.scores(adapters, self.measure).cpu()  # the one host read of the scores
        return self._choose(step, adapters, self._pick(scores, importance.counts(adapters).cpu()), scores)

    def state_dict(self):
        """Plain data for a checkpoint; the score and count buffers are in the adapters' own state dicts."""
        return {"config": self.config(), "active": list(self.active),
                "history": [(s, list(n)) for s, n in self.history], "generator": self.generator.get_state()}

    def load_state_dict(self, state, adapters):
        """Restore from `state_dict()` and make the saved active set active again."""
        changed = sorted(k for k, v in self.config().items() if state["config"].get(k) != v)
        if changed:
            raise ValueError(f"the checkpoint's allocation differs from this run's in {', '.join(changed)}")
        self.generator.set_state(state["generator"].cpu())  # torch.load(map_location=cuda) may have moved it
        self.active = list(state["active"])
        self.history = [(int(s), list(n)) for s, n in state["history"]]
        apply(adapters, self.active)


def selection_fractions(history, names, total_steps):
    """{name: fraction of the optimizer steps 1..total_steps during which the module was active}."""
    steps = dict.fromkeys(names, 0)
    for i, (start, active) in enumerate(history):
        end = history[i + 1][0] if i + 1 < len(history) else total_steps
        for name in active:
            steps[name] += max(0, min(end, total_steps) - start)
    return {name: n / total_steps for name, n in steps.items()}


# ----------------------------------------------------------------------------- optimizers (3.4)

def linear_warmup_decay(warmup_steps, total_steps):
    """LR factor after t updates: 0 -> 1 linearly over warmup, then linearly to 0 at total_steps
    (as transformers' get_linear_schedule_with_warmup, which the LoRA and VeRA papers train with)."""
    def factor(t):
        if t < warmup_steps:
            return t / warmup_steps
        return max(0.0, (total_steps - t) / max(1, total_steps - warmup_steps))
    return factor


class LocalAdamW:
    """'Local optimization' (sec. 3.4): one AdamW and one LR schedule per adapter module, stepped only while active.

    What it adds to `global`, honestly: torch's AdamW already keeps moments and a step count per parameter and
    skips parameters whose grad is None, so the global optimizer too keeps each returning module's moments and
    bias correction untouched while it is inactive. The two differ only in the learning-rate schedule:
    - warmup runs on the module's OWN updates, over `active_share` (its expected share of the steps, k/M) of the
      global warmup, so a module first chosen late starts its fresh Adam moments gently, and even at k/M = 1/24
      every module leaves warmup after a few updates;
    - decay runs on the training clock (global steps), as the global schedule's, so every module's LR ends near 0
      at the end of training, whatever share of the steps it was trained. (A decay over the module's own update
      count with the full horizon would leave a module trained 2/3 of the time at about 1/3 of its peak.)
    With every module always active (share 1) this is the global schedule exactly; with no warmup the local and
    global optimizers give bitwise the same weights. The head always trains, on the global schedule.
    """

    def __init__(self, adapters, head_params, lr, head_lr, weight_decay, total_steps, warmup_steps,
                 betas=(0.9, 0.999), eps=1e-8, active_share=1.0):
        self.adapters, self.lr, self.head_lr = adapters, lr, head_lr
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.module_warmup = round(warmup_steps * active_share)  # in the module's own updates
        self.optimizers = {name: torch.optim.AdamW(a.adapter_params(), lr=lr, betas=betas, eps=eps,
                                                   weight_decay=weight_decay) for name, a in adapters.items()}
        self.head = None
        if head_params:
            self.head = torch.optim.AdamW(head_params, lr=head_lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.t = 0                               # optimizer steps taken (the training clock)
        self.updates = dict.fromkeys(adapters, 0)  # updates each module received
        self._set_lrs()

    def factor(self, name):
        """LR factor of module `name` for its next update: own-update warmup times the clock's linear decay."""
        n, t, w = self.updates[name], self.t, self.module_warmup
        decay = 1.0 if t < self.warmup_steps else max(0.0, (self.total_steps - t) / max(1, self.total_steps - self.warmup_steps))
        return n / w * decay if n < w else decay

    def _set_lrs(self):
        for name, o in self.optimizers.items():
            for g in o.param_groups:
                g["lr"] = self.lr * self.factor(name)
        if self.head is not None:
            for g in self.head.param_groups:
                g["lr"] = self.head_lr * linear_warmup_decay(self.warmup_steps, self.total_steps)(self.t)

    def step(self):
        for name, a in self.adapters.items():
            if a.active:
                self.optimizers[name].step()
                self.updates[name] += 1
        if self.head is not None:
            self.head.step()
        self.t += 1
        self._set_lrs()

    @property
    def param_groups(self):
        """Every parameter group of the per-module AdamWs and the head's, so torch.amp.GradScaler can unscale them."""
        opts = list(self.optimizers.values()) + ([self.head] if self.head is not None else [])
        return [g for o in opts for g in o.param_groups]

    def zero_grad(self, set_to_none=True):
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)
        if self.head is not None:
            self.head.zero_grad(set_to_none=set_to_none)

    def lrs(self):
        out = {name: o.param_groups[0]["lr"] for name, o in self.optimizers.items()}
        if self.head is not None:
            out["head"] = self.head.param_groups[0]["lr"]
        return out

    def state_dict(self):
        return {"t": self.t, "updates": dict(self.updates),
                "modules": {name: o.state_dict() for name, o in self.optimizers.items()},
                "head": None if self.head is None else self.head.state_dict()}

    def load_state_dict(self, state):
        if "t" not in state or list(state["modules"]) != list(self.optimizers) or \
                (state["head"] is None) != (self.head is None):
            raise ValueError("the checkpoint's local optimizer was made for other adapter modules or by an older version")
        for name, o in self.optimizers.items():
            o.load_state_dict(state["modules"][name])
        if self.head is not None:
            self.head.load_state_dict(state["head"])
        self.t, self.updates = int(state["t"]), {n: int(state["updates"][n]) for n in self.optimizers}
        self._set_lrs()


def build_optimizer(kind, adapters=None, head_params=(), *, lr, head_lr=None, weight_decay=0.0, total_steps,
                    warmup_steps=0, params=None, betas=(0.9, 0.999), eps=1e-8, active_share=1.0):
    """(optimizer, scheduler or None) for {adapter path: adapter} plus head, or for a plain `params` list.

    global: one torch.optim.AdamW over EVERY adapter parameter, active or not, so that a module chosen
      later trains (inactive ones have grad None: AdamW skips them, no moment update, no weight decay, and
      their per-parameter step count, hence bias correction, waits), the head in its own group at head_lr,
      and a LambdaLR linear warmup/decay: call scheduler.step().
    local: a LocalAdamW (schedules inside, scheduler is None); `active_share` (k/M) sets each module's
      warmup in its own updates. It differs from global only in that schedule (see LocalAdamW).
    params (full fine-tuning, BitFit): a plain AdamW over `params` (+ head group if given), as global.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{kind}'; choose from {', '.join(OPTIMIZERS)}")
    if (adapters is None) == (params is None):
        raise ValueError("give build_optimizer either adapters (a dict of adapter modules) or params, not both")
    if not _is_int_at_least(total_steps, 1):
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps}")
    if not _is_int_at_least(warmup_steps, 0) or warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be an integer from 0 to total_steps ({total_steps}), got {warmup_steps}")
    if not (math.isfinite(lr) and lr >= 0 and weight_decay >= 0):
        raise ValueError(f"lr and weight_decay must be finite and >= 0, got lr={lr}, weight_decay={weight_decay}")
    head_lr = lr if head_lr is None else head_lr
    head_params = list(head_params)
    if kind == "local":
        if adapters is None:
            raise ValueError("the local optimizer keeps state per adapter module; it needs adapters, not params")
        if not 0 < active_share <= 1:
            raise ValueError(f"active_share must be in (0, 1], got {active_share}")
        return LocalAdamW(adapters, head_params, lr, head_lr, weight_decay, total_steps, warmup_steps, betas, eps,
                          active_share), None
    body = list(params) if params is not None else [p for a in adapters.values() for p in a.adapter_params()]
    groups = [{"params": body, "lr": lr, "name": "params" if params is not None else "adapters"}]
    if head_params:
        groups.append({"params": head_params, "lr": head_lr, "name": "head"})
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup_steps, total_steps))


def current_lrs(optimizer):
    """{group or module name: current LR}, for logging either kind of optimizer."""
    if isinstance(optimizer, LocalAdamW):
        return optimizer.lrs()
    return {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
