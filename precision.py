"""Mixed precision for train.py: torch.autocast around every forward, and loss scaling for float16
(torch.amp.GradScaler; Micikevicius et al. 2018, "Mixed Precision Training").

--precision fp32 (the default) changes nothing: no autocast, a disabled scaler, every number as without this file.
--precision bf16 or fp16:
- every forward (training, evaluation, the importance probes) runs under torch.autocast in that dtype;
- the frozen base weights are stored in that dtype (`cast_frozen`): half their memory, and no low-precision copy of
  each frozen weight is made at every forward and saved for backward, as autocast does for float32 weights;
- what trains stays float32: adapter parameters (LoRA's A and B, VeRA's vectors), the head, the parameters that full
  fine-tuning or BitFit train, and with them the gradients and the AdamW states. The importance accumulators are
  float32 (float64 counts) whatever the activation dtype: lora.Adapter takes every norm in float32.
fp16 also scales the loss, so that small gradients do not flush to zero. A step whose gradients overflow is skipped
by the scaler (`step` returns False): it is no update, so train.py does not advance the LR schedule, the modules'
n_updates or the allocation clock, and the importance scores of that step are rolled back. The gradient scores
(`grad`, `param_grad`) are measured on scaled gradients; `step` divides what the step added by the scale.
"""
from contextlib import nullcontext

import torch

import importance
import lora

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision, device):
    """The context every forward runs in: nothing for fp32, torch.autocast otherwise (CUDA and CPU)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def cast_frozen(model, precision):
    """Store the frozen parameters in the low-precision dtype, in place (the Parameter objects stay, so tied weights
    stay tied): those of every module none of whose own parameters require grad now. A module with a trained
    parameter (an adapter's A and B, the head, BitFit's LayerNorm with its bias) keeps all of its own in float32, so
    no op meets a half weight beside a float32 bias; an adapter's frozen base is its own module and is cast. Call it
    after inject and before building the optimizer. Buffers (importance accumulators, VeRA's projections) stay."""
    if precision == "fp32":
        return
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if not any(prm.requires_grad for prm in own):
            for prm in own:
                if prm.is_floating_point():
                    prm.data = prm.data.to(PRECISIONS[precision])


def scaler(precision, device):
    """A torch.amp.GradScaler, enabled for fp16 only; disabled, scale() and unscale_() do nothing and step() is
    optimizer.step()."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def score_snapshot(adapters):
    """Copies of the adapters' score and count buffers before a step (fp16 only: `step` needs them)."""
    return [b.clone() for b in importance.buffers(adapters)]


@torch.no_grad()
def step(scaler, optimizer, adapters=None, before=None):
    """optimizer.step() through the scaler; returns False when fp16 gradients overflowed and the step was skipped.

    With `before` (score_snapshot, taken before the step's first forward): a skipped step's scores are rolled back,
    and otherwise what the step added to the gradient scores is divided by the loss scale it was measured at.
    Call scaler.unscale_(optimizer) first when clipping. fp16 reads the scale back to the host once per step."""
    if not scaler.is_enabled():
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale  # the scaler halves its scale after an overflow, never otherwise
    if before is not None:
        kinds = [(s, k) for s in lora.SCORES for k in ("score", "count")] * len(adapters)  # importance.buffers' order
        for (s, k), buf, old in zip(kinds, importance.buffers(adapters), before):
            if not stepped:
                buf.copy_(old)
            elif s != "fwd" and k == "score":  # gradient scores were measured on scaled gradients
                buf.copy_(old + (buf - old) / scale)
    return stepped
