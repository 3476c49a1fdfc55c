"""Module importance for dynamic adapter allocation (DynaLoRA, Brouwers et al. 2024, section 3.1).

Holds:
- `MEASURES`: which accumulator of `lora.Adapter` each importance measure reads (a sum and its count).
    forward     fwd: ||h||_2 per real token, h = (W + dW) x the module's output (eq. 1)
    gradient    grad: ||dL/dh||_2 per real token (the paper's "backward activations")
    param_grad  param_grad: the adapter's own gradient norm per backward pass, ||grad A|| + ||grad B|| for LoRA
                (HeteroLoRA's grad_norm proxy, Zhang et al. 2024; the DynaLoRA paper's "gradients of the
                adapter weight matrices" read literally)
    snip        snip: sum |theta * grad theta| over the adapter's weights per backward pass (SNIP, Lee et al.
                2019; HeteroLoRA's snip proxy)
    synflow     synflow: sum |theta| * dR/d|theta| over the adapter's weights, R the summed output of the model
                with every weight made positive, for an all-ones input (SynFlow, Tanaka et al. 2020): data-free
    random      no measure: every module scores 1, nothing is tracked
  The score of a module is its sum divided by its count over the window. For `forward` every module sees
  the same tokens, so this is eq. 1's sum up to one factor that eq. 2 cancels.
  The HeteroLoRA proxies against the authors' code (importance_testing/ and pl_callbacks/dyrealloc_callback.py
  of ZixiBenZhang/lora_global_synergies): on one probe batch param_grad is their grad_norm and snip their snip
  (they mask A and B with ones and read the mask's gradient, theta * grad theta). Over several batches they sum
  the gradients first and take one norm (grad_norm: ||sum_b grad_b||; snip: sum |theta * sum_b grad_b|); we
  average per-pass values, which is what per-pass hooks give during training as well. Their synflow backpropagates
  the task loss of a labelled batch with all-ones embeddings; ours, as the SynFlow paper defines it,
  backpropagates the sum of the logits, so it reads no data but the sequence length.
- LoRA's B = 0 at init. grad_norm is fine with it: grad A = scaling * B^T (dL/dh) x^T is 0 but grad B is not.
  SNIP and SynFlow are not: theta * grad theta is 0 for B (B = 0) and for A (grad A = 0), so every module scores
  exactly 0 and the first allocation would be a tie; in a dynamic run a module never trained keeps B = 0 and
  score 0, and is never chosen again (the authors' dynamic synflow logs show both: all 0 at step 0, and 0 for
  the modules outside the first draw ever after). Both proxies were made for randomly initialised networks, so
  `probe` scores a module whose B is still exactly 0 with a stand-in B (`stand_in_b`: drawn as LoRA draws A
  before any module has trained, at the trained modules' scale afterwards) and puts B = 0 back afterwards.
  Trained modules are scored with their own B; training never sees the stand-in. VeRA (lambda_b = 0) has no
  stand-in: probe refuses snip and synflow for it.
- `PARTIAL`: the measures that training records for only some modules: adapter gradients exist only for
  active modules, and output gradients only down to the lowest active module (backward stops there); synflow,
  data-free, is recorded by the probe alone. Left alone, a module outside the first active set would keep
  score 0 and never be chosen again. So before each re-allocation train.py runs `probe(..., keep=True)` on one
  batch, which measures every module (under a depth budget every eligible one: `only`); with the per-count
  mean, one fresh measurement makes a module comparable
  to those trained all window long.
- `set_tracking`: switch on exactly the accumulators a measure needs (none for random: zero overhead).
- `scores`, `counts`: one (M,) tensor on the adapters' device, stacked without reading anything back.
- `normalize` (eq. 2) and `discount` (eq. 3).
- `WINDOWS` and `reset`: scores since the start (the paper's D_t) or since the last re-allocation.
- `probe`: scores for the first allocation, from a few batches before the first optimizer step.
- `left_as_found`: the context the probe runs in, which restores the model's state afterwards.
"""
import contextlib
import math

import torch

import lora

MEASURES = {"forward": "fwd", "gradient": "grad", "param_grad": "param_grad", "snip": "snip", "synflow": "synflow",
            "random": None}
PARTIAL = ("gradient", "param_grad", "snip", "synflow")
ZERO_B = ("snip", "synflow")  # proxies that are 0 while B = 0: probe scores such modules with a stand-in B
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
        a.track_snip = measure == "snip"


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
    was_tracking = [(a.track_forward, a.track_grad, a.track_param_grad, a.track_snip) for a in mods]
    was_training = model.training
    cuda = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            for a, act, flags in zip(mods, was_active, was_tracking):
                a.set_active(act)
                a.track_forward, a.track_grad, a.track_param_grad, a.track_snip = flags
            model.train(was_training)
            for p in model.parameters():
                p.grad = None


def buffers(adapters):
    """Every score and count buffer of the adapters, in a fixed order (to fold over ranks, or to snapshot)."""
    return [getattr(a, f"{name}_{kind}") for a in _modules(adapters) for name in lora.SCORES for kind in ("score", "count")]


def probe(model, adapters, batches, measure, keep=False, only=None, weights=None):
    """Score `batches` with every adapter active (or those named in `only`), without training.

    keep=False, before step 0: the scores of the first allocation. Returns the (M,) scores (None for `random` or
      no batches: the first allocation is then uniform) and leaves the accumulators at zero, so that
      training-time scores count only training steps.
    keep=True, before a re-allocation with a PARTIAL measure: adds the batches' measurements to every module's
      accumulators, so that each module has a score from the current window; returns None.

    Each batch is a dict the model takes as **kwargs, with labels so that it returns a loss. `weights` (one float per
    batch) multiplies each batch's loss: a micro-batch's share of its global batch (--grad-accum, torchrun), so that
    gradient scores per token are those of the global batch. `forward` needs
    only forward passes; the gradient measures also run backward (no optimizer step). With LoRA's B = 0 at
    init only grad B is non-zero at first, which is fine for param_grad; snip and synflow score a module whose
    B is still 0 with a stand-in B (see the module docstring). synflow makes one data-free pass (`synflow`)
    of the first batch's length. Afterwards the weights, active states, tracking flags, train/eval mode and
    the random number generators (dropout draws) are as before and every gradient is None, so that a run with
    every module active trains exactly as plain LoRA.
    """
    check_measure(measure)
    if measure == "random":
        return None
    mods = _modules(adapters)
    if measure in ZERO_B and not all(hasattr(a, "lora_B") for a in mods):
        raise ValueError(f"importance '{measure}' scores LoRA adapters (lora_A, lora_B); VeRA's lambda_b = 0 at init "
                         "would score every module 0")
    on = [True] * len(mods) if only is None else [name in set(only) for name in adapters]
    y, n, stand_ins = None, 0, []
    with left_as_found(model, mods):  # the probe's dropout draws leave no trace
        try:
            set_tracking(mods, measure)
            if not keep:
                reset(mods)
            for a, act in zip(mods, on):
                a.set_active(act)
            if measure in ZERO_B:
                stand_ins = stand_in_b([a for a, act in zip(mods, on) if act])
            model.train()  # the accumulators only count training passes
            with torch.enable_grad():
                if measure == "synflow" and batches:  # data-free: one pass, of the first batch's length
                    synflow(model, mods, batches[0]["input_ids"].shape[1])
                    n = 1
                for batch, w in zip(batches, weights or [1.0] * len(batches)) if measure != "synflow" else ():
                    out = model(**batch)
                    if measure != "forward":
                        if getattr(out, "loss", None) is None:
                            raise ValueError("probe batches need labels so that the model returns a loss")
                        (out.loss if w == 1 else out.loss * w).backward()
                    for p in model.parameters():  # per-pass gradient norms, not norms of a running sum
                        p.grad = None
                    n += 1
            y = None if keep else scores(mods, measure)
        finally:
            with torch.no_grad():
                for a in stand_ins:
                    a.lora_B.zero_()
            if not keep:
                reset(mods)
    return y if n else None


@torch.no_grad()
def stand_in_b(adapters):
    """Give each LoRA module whose B is still exactly 0 a stand-in B, uniform from a CPU generator seeded by the
    module's position (the same draw at every probe; the global RNG is untouched): before any module has trained,
    with the bound LoRA draws A with (kaiming-uniform, a = sqrt(5): 1/sqrt(fan_in) = 1/sqrt(r)); afterwards with
    the root-mean-square of the trained modules' B, so that trained and untrained modules are scored at one scale
    (both proxies grow about linearly with the size of B). Returns the modules changed: their B must go back to 0."""
    mods = _modules(adapters)
    zero = [not a.lora_B.any() for a in mods]  # one host read per module, at probe time only
    trained = [a.lora_B.double().square().mean() for a, z in zip(mods, zero) if not z]
    rms = torch.stack(trained).mean().sqrt().item() if trained else None
    changed = []
    for i, (a, z) in enumerate(zip(mods, zero)):
        if z:
            B = a.lora_B
            bound = 1.0 / math.sqrt(B.shape[1]) if rms is None else math.sqrt(3.0) * rms  # uniform(-c, c): rms c/sqrt(3)
            B.copy_(torch.empty(B.shape).uniform_(-bound, bound, generator=torch.Generator().manual_seed(i)))
            changed.append(a)
    return changed


def synflow(model, adapters, seq_len):
    """SynFlow (Tanaka et al. 2020): add sum |theta| * dR/d|theta| over each adapter's weights to its synflow
    accumulator (count + 1), R = the sum of the logits of the model with every parameter replaced by its absolute
    value, for one all-ones input embedding of `seq_len` positions (no padding). Eval mode: no dropout. The signs
    are put back exactly afterwards; gradients are left for the caller to clear."""
    params = list(model.parameters())
    with torch.no_grad():
        negative = [p < 0 for p in params]  # one bit per weight is enough to undo abs() exactly
        for p in params:
            p.abs_()
    was_training = model.training
    try:
        model.eval()
        emb = model.get_input_embeddings().weight
        ones = torch.ones(1, seq_len, emb.shape[1], dtype=emb.dtype, device=emb.device)
        mask = torch.ones(1, seq_len, dtype=torch.long, device=emb.device)
        model(inputs_embeds=ones, attention_mask=mask).logits.sum().backward()
        with torch.no_grad():
            for a in _modules(adapters):
                for p in a.adapter_params():
                    if p.grad is not None:
                        a.synflow_score += torch.linalg.vector_norm(p * p.grad, ord=1, dtype=torch.float32)
                a.synflow_count += 1
    finally:
        model.train(was_training)
        with torch.no_grad():
            for p, neg in zip(params, negative):
                p.copy_(torch.where(neg, -p, p))
