"""Module importance for dynamic adapter allocation (DynaLoRA, Brouwers et al. 2024, section 3.1).

Holds:
- `MEASURES`: which accumulator of `lora.Adapter` each importance measure reads.
    forward     fwd_score: sum over tokens of ||h||_2, h the module's output (eq. 1)
    gradient    grad_score: sum over tokens of ||dL/dh||_2 (the paper's "backward activations")
    param_grad  param_grad_score: sum of the adapter's own gradient norms (HeteroLoRA's zero-cost proxy,
                Zhang et al. 2024; the paper's "gradients of the adapter weight matrices" read literally)
    random      no measure: every module scores 1, nothing is tracked
- `set_tracking`: switch on exactly the accumulators a measure needs (none for random: zero overhead).
- `scores`, `counts`: one (M,) tensor on the adapters' device, stacked without reading anything back.
- `normalize` (eq. 2) and `discount` (eq. 3).
- `WINDOWS` and `reset`: scores since the start (the paper's D_t) or since the last re-allocation.
- `probe`: scores for the first allocation, from a few batches before the first optimizer step.
"""
import torch

MEASURES = {"forward": "fwd_score", "gradient": "grad_score", "param_grad": "param_grad_score", "random": None}
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
    """(M,) raw importance y_t (eq. 1 for `forward`) in the adapters' order, on their device; no host sync."""
    check_measure(measure)
    mods = _modules(adapters)
    if measure == "random":
        return torch.ones(len(mods), device=mods[0].fwd_score.device)
    return torch.stack([getattr(a, MEASURES[measure]) for a in mods])  # a copy: later resets do not change it


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


def probe(model, adapters, batches, measure):
    """Importance for the first allocation: score `batches` with every adapter active, without training.

    Each batch is a dict the model takes as **kwargs, with labels so that it returns a loss. `forward` needs
    only forward passes; the gradient measures also run backward (no optimizer step). With LoRA's B = 0 at
    init only grad B is non-zero at first, which is fine for a score. Afterwards the active states, tracking
    flags, train/eval mode and the random number generators (dropout draws) are as before, every gradient is
    None and the accumulators are zero, so that training-time scores count only training steps and a run with
    every module active trains exactly as plain LoRA. Returns the (M,) scores, or None for `random` or no
    batches (the first allocation is then uniform).
    """
    check_measure(measure)
    if measure == "random":
        return None
    mods = _modules(adapters)
    was_active = [a.active for a in mods]
    was_tracking = [(a.track_forward, a.track_grad, a.track_param_grad) for a in mods]
    was_training = model.training
    y, n = None, 0
    cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):  # the probe's dropout draws leave no trace
        try:
            set_tracking(mods, measure)
            reset(mods)
            for a in mods:
                a.set_active(True)
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
            y = scores(mods, measure)
        finally:
            for a, act, flags in zip(mods, was_active, was_tracking):
                a.set_active(act)
                a.track_forward, a.track_grad, a.track_param_grad = flags
            model.train(was_training)
            for p in model.parameters():
                p.grad = None
            reset(mods)
    return y if n else None
