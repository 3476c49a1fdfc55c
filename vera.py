"""VeRA adapters (Kopiczko et al. 2023): dW = Lambda_b B Lambda_d A.

A (r x max_in) and B (max_out x r) are frozen random matrices shared by every adapted layer, drawn
from a seed with VeRA's kaiming-uniform (gain sqrt(2), bound sqrt(6 / fan_in), A then B from one generator:
the same numbers as PEFT's VeRA for the same seed), so they are reproducible and never stored; each
layer uses the slice A[:, :in], B[:out, :]. Only the vectors lambda_d (r) and lambda_b (out) train.
The default rank is the VeRA paper's GLUE setting, r = 1024 (its Table 8, RoBERTa-base), as in train.py.
Accumulators, active state, merging and injection come from lora.Adapter and lora.inject. `export_peft`
writes PEFT's VeRA format with the projections stored (save_projection=True), so PEFT need not redraw them.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import lora
from lora import Adapter, inject


def kaiming_uniform(shape, generator, dtype=torch.float32):
    # VeRA's init: kaiming-uniform for ReLU gain, bound = sqrt(3) * sqrt(2) / sqrt(fan_in) = sqrt(6 / fan_in);
    # the arithmetic is PEFT's, so the floats match it bit for bit. (Not loralib's a=sqrt(5): that is 2.45x smaller.)
    bound = math.sqrt(3.0) * (math.sqrt(2) / math.sqrt(shape[1]))
    return torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=generator)


class VeRAShared(nn.Module):
    """The shared frozen projections; non-persistent buffers, rebuilt from (r, seed) and the model's shapes."""

    def __init__(self, r, seed=0):
        super().__init__()
        self.r, self.seed = r, seed
        self.register_buffer("vera_A", torch.empty(0), persistent=False)
        self.register_buffer("vera_B", torch.empty(0), persistent=False)

    def build(self, max_in, max_out, device=None, dtype=torch.float32):
        g = torch.Generator().manual_seed(self.seed)
        self.vera_A = kaiming_uniform((self.r, max_in), g, dtype).to(device)   # (r, max_in)
        self.vera_B = kaiming_uniform((max_out, self.r), g, dtype).to(device)  # (max_out, r)


class VeRALinear(Adapter):
    def __init__(self, base: nn.Linear, shared: VeRAShared, d_initial=0.1, dropout=0.0):
        super().__init__(base)
        self.r, self.d_initial = shared.r, float(d_initial)
        self.shared = shared  # the same module object in every layer; named_modules() lists it once
        w = base.weight
        self.lambda_d = nn.Parameter(torch.full((self.r,), float(d_initial), dtype=w.dtype, device=w.device))
        self.lambda_b = nn.Parameter(torch.zeros(self.out_features, dtype=w.dtype, device=w.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._init_hooks()

    def adapter_params(self):
        return [self.lambda_d, self.lambda_b]

    def delta(self, x):
        A = self.shared.vera_A[:, :self.in_features]   # (r, in)
        B = self.shared.vera_B[:self.out_features, :]  # (out, r)
        x = self.dropout(x) if self.active else x
        return self.lambda_b * F.linear(self.lambda_d * F.linear(x, A), B)

    def delta_weight(self):
        A = self.shared.vera_A[:, :self.in_features]
        B = self.shared.vera_B[:self.out_features, :]
        return (self.lambda_b[:, None] * B) @ (self.lambda_d[:, None] * A)  # (out, in)


def inject_vera(model, targets, r=1024, d_initial=0.1, dropout=0.0, seed=0):
    """Inject VeRA adapters; returns {module path: VeRALinear} like lora.inject."""
    if int(r) != r or r < 1:
        raise ValueError(f"VeRA rank r must be an integer >= 1, got {r}")
    shared = VeRAShared(int(r), seed)
    adapters = inject(model, targets, lambda lin: VeRALinear(lin, shared, d_initial, dropout))
    some = next(iter(adapters.values())).base.weight
    shared.build(max(a.in_features for a in adapters.values()), max(a.out_features for a in adapters.values()),
                 device=some.device, dtype=some.dtype)
    return adapters


def export_peft(out_dir, model, adapters, base_model_name_or_path=""):
    """VeRA adapters in PEFT's on-disk format, loadable by peft.PeftModel.from_pretrained(base, out_dir): per layer
    vera_lambda_b (out) and vera_lambda_d (r), the shared projections as base_model.vera_A (r, max_in) and
    base_model.vera_B (max_out, r), and the head as modules_to_save."""
    first = next(iter(adapters.values()))
    if not all(isinstance(a, VeRALinear) and a.shared is first.shared for a in adapters.values()):
        raise ValueError("the VeRA PEFT export is for VeRA adapters sharing one pair of projections")
    sd = {"base_model.vera_A": first.shared.vera_A.detach(), "base_model.vera_B": first.shared.vera_B.detach()}
    for path, a in adapters.items():
        sd[f"base_model.model.{path}.vera_lambda_b"] = a.lambda_b.detach()
        sd[f"base_model.model.{path}.vera_lambda_d"] = a.lambda_d.detach()
    config = {
        "peft_type": "VERA", "r": first.r, "projection_prng_key": first.shared.seed, "save_projection": True,
        "vera_dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0,
        "d_initial": first.d_initial, "init_weights": True,
    }
    lora.write_peft(out_dir, model, adapters, sd, config, base_model_name_or_path)
