"""Module importance for dynamic adapter allocation (DynaLoRA, Brouwers et al. 2024, section 3.1).

Holds:
- `MEASURES`: which accumulator of `lora.Adapter` each importance measure reads (a sum and its count).
    forward     fwd: ||h||_2 per real token, h = (W + dW) x the module's output (eq. 1)
    gradient    grad: ||dL/dh||_2 per real token (the paper's "backward activations")
    param_grad  param_grad: the adapter's own gradient norm per backward pass (HeteroLoRA's zero-cost proxy,
                Zhang et al. 2024; the paper's "gradients of the adapter weight matrices" read literally)
    random      no measure: every module scores 1, nothing is tracked
  The score of a module is its sum divided by its count over the window. For `forward` every module sees
  the same tokens, so this is eq. 1's sum up to one factor that eq. 2 cancels.
- `PARTIAL`: the measures that training records for only some modules: adapter gradients exist only for
  active modules, and output gradients only down to the lowest active module (backward stops there). Left
  alone, a module outside the first active set would keep score 0 and never be chosen again. So before each
  re-allocation train.py runs `probe(..., keep=True)` on one batch, which measures every module (under a depth
  budget every eligible one: `only`); with the per-count mean, one fresh measurement makes a module comparable
  to those trained all window long.
- `set_tracking`: switch on exactly the accumulators a measure needs (none for random: zero overhead).
- `scores`, `counts`: one (M,) tensor on the adapters' device, stacked without reading anything back.
- `normalize` (eq. 2) and `discount` (eq. 3).
- `WINDOWS` and `reset`: scores since the start (the paper's D_t) or since the last re-allocation.
- `probe`: scores for the first allocation, from a few batches before the first optimizer step.
- `left_as_found`: the context the probe runs in, which restores the model's state afterwards.
"""
import contextlib

import torch

MEASURES = {"forward": "fwd", "gradient": "grad", "param_grad": "param_grad", "random": None}
PARTIAL = ("gradient", "param_grad")
WINDOWS = ("cumulative", "since_last")


def check_measure(measure):
    if measure not in MEASURES:
        raise ValueError(f"unknown importance measure '{measure}'; choose from {', '.join(MEASURES)}")


def check_window(window):
    if window not in WINDOWS:
        raise ValueError(f"unknown importance window '{window}'; choose from {', '.join(WINDOWS)}")


def _modules(adapters):
    return list(adapters.values()) if isinstance(adapters, dict) else list(adapters)


def set_tracking(adapters, measure):
    """Turn each adapter's accumulators on for exactly what `measure` reads, and off otherwise."""
    check_measure(measure)
    for a in _modules(adapters):
        a.track_forward = measure == "forward"
        a.track_grad = measure == "gradient"
        a.track_param_grad = measure == "param_grad"


def scores(adapters, measure):
    """(M,) raw importance y_t in the adapters' order, on their device, no host sync: each module's sum over the
    window divided by its count (0 for a module not measured yet)."""
    check_measure(measure)
    mods = _modules(adapters)
    if measure == "random":
        return torch.ones(len(mods), device=mods[0].fwd_score.device)
    total = torch.stack([getattr(a, f"{MEASURES[measure]}_score") for a in mods]).double()
    count = torch.stack([getattr(a, f"{MEASURES[measure]}_count") for a in mods])
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def counts(adapters):
    """(M,) optimizer updates each module has received (C in eq. 3), on the adapters' device."""
    return torch.stack([a.n_updates for a in _modules(adapters)])


def normalize(y):
    """Eq. 2: y / sum(y). All zero (nothing measured yet) -> uniform. Stays on y's device, no host sync."""
    y = y if y.is_floating_point() else y.double()
    total = y.sum()
    return torch.where(total > 0, y / total.clamp_min(torch.finfo(y.dtype).tiny), torch.full_like(y, 1.0 / y.numel()))


def discount(y_hat, n_updates):
    """Eq. 3: y_hat / C with C = 1 + n_updates, so that counts start at 1 and a fresh module is not divided by 0."""
    return y_hat / (1 + n_updates)


def reset(adapters):
    for a in _modules(adapters):
        a.reset_scores()


@contextlib.contextmanager
def left_as_found(model, adapters):
    """Run a block that switches adapters, their tracking and train mode, and draws dropout, and leave the model
    as it was: active states, tracking flags, train/eval mode and the random number generators restored,
    every gradient None. The probe and memory.depth_costs run inside it."""
    mods = _modules(adapters)
    was_active = [a.active for a in mods]
    was_tracking = [(a.track_forward, a.track_grad, a.track_param_grad) for a in mods]
    was_training = model.training
    cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            for a, act, flags in zip(mods, was_active, was_tracking):
                a.set_active(act)
                a.track_forward, a.track_grad, a.track_param_grad = flags
            model.train(was_training)
            for p in model.parameters():
                p.grad = None


def probe(model, adapters, batches, measure, keep=False, only=None):
    """Score `batches` with every adapter active (or those named in `only`), without training.

    keep=False, before step 0: the scores of the first allocation. Returns the (M,) scores (None for `random` or
      no batches: the first allocation is then uniform) and leaves the accumulators at zero, so that
      training-time scores count only training steps.
    keep=True, before a re-allocation with a PARTIAL measure: adds the batches' measurements to every module's
      accumulators, so that each module has a score from the current window; returns None.

    Each batch is a dict the model takes as **kwargs, with labels so that it returns a loss. `forward` needs
    only forward passes; the gradient measures also run backward (no optimizer step). With LoRA's B = 0 at
    init only grad B is non-zero at first, which is fine for a score. Afterwards the active states, tracking
    flags, train/eval mode and the random number generators (dropout draws) are as before and every gradient
    is None, so that a run with every module active trains exactly as plain LoRA.
    """
    check_measure(measure)
    if measure == "random":
        return None
    mods = _modules(adapters)
    on = [True] * len(mods) if only is None else [name in set(only) for name in adapters]
    y, n = None, 0
    with left_as_found(model, mods):  # the probe's dropout draws leave no trace
        try:
            set_tracking(mods, measure)
            if not keep:
                reset(mods)
            for a, act in zip(mods, on):
                a.set_active(act)
            model.train()  # the accumulators only count training passes
            with torch.enable_grad():
                for batch in batches:
                    out = model(**batch)
                    if measure != "forward":
                        if getattr(out, "loss", None) is None:
                            raise ValueError("probe batches need labels so that the model returns a loss")
                        out.loss.backward()
                    for p in model.parameters():  # per-pass gradient norms, not norms of a running sum
                        p.grad = None
                    n += 1
            y = None if keep else scores(mods, measure)
        finally:
            if not keep:
                reset(mods)
    return y if n else None
