"""LoRA-adapted shortcut connections for BERT/RoBERTa encoders (HeteroLoRA, Zhang et al. 2024, Figure 3).

Holds:
- `Shortcut`: a LoRA adapter whose frozen part is the identity (a residual) or zero (a new connection) instead of
  an nn.Linear: out = F x + scaling * B A dropout(x), F = I or 0. It is a `lora.LoRALinear` in every other respect
  (lora_A, lora_B, r, alpha, scaling, the importance accumulators, `set_active`, `n_updates`), so importance.py
  and allocate.py treat a shortcut exactly as any other module.
- `TARGETS`: the four kinds, as --targets names, with the path each lives at (regexes like lora.TARGETS).
  In post-LN layer l with input x, attention output a = LN1(attn(x) + x) and output LN2(ffn(a) + a):
    s_res1  the attention residual,          LN1(attn(x) + x + dW x)        (x -> x + dW x, was the identity)
    s_res2  the FFN residual,                LN2(ffn(a) + a + dW a)
    s_in    layer input to the FFN sum,      LN2(ffn(a) + a + dW x)         (same-layer "cross-layer", new)
    s_cut   layer l-1's FFN input a' to the attention sum of layer l: LN1(attn(x) + x + dW a')  (cut-layer, new;
            none in layer 0)
  Each lives in the module whose sum it adds to (attention.output or output) and is wired in by forward
  pre-hooks on those modules: no model code changes. Every shortcut adds where the residual is added, before
  the LayerNorm, so with B = 0 every sum, and so the model, is exactly unchanged. (The authors' code, for OPT,
  adds its cross-layer shortcuts after the LayerNorm and normalises again, which is not a no-op at init.)
- `inject`: LoRA on the linear targets (lora.inject) and shortcuts on the shortcut targets; one {path: adapter}.
- `export_merged` / `load_merged`: a shortcut changes how a layer is wired, so no plain weight can hold it
  (s_res and s_in add a per-position linear map of x or a beside attention and the GELU MLP, s_cut a connection
  BERT does not have). The merged export is the model with the LoRA modules folded into plain weights plus
  `shortcuts.safetensors` beside it; `load_merged` loads both and gives the trained model's outputs.
"""
import functools
import json
import os
import re

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import lora

TARGETS = {
    "s_res1": r"\.attention\.output\.s_res1$",
    "s_res2": r"\.layer\.\d+\.output\.s_res2$",
    "s_in": r"\.layer\.\d+\.output\.s_in$",
    "s_cut": r"\.attention\.output\.s_cut$",
}
HOMES = {"s_res1": "attention.output", "s_cut": "attention.output", "s_res2": "output", "s_in": "output"}  # the sum
FILE = "shortcuts.safetensors"


class Fixed(nn.Module):
    """The frozen part of a shortcut, without weights: the identity (a residual) or zero (a new connection)."""

    def __init__(self, identity):
        super().__init__()
        self.identity, self.bias = identity, None  # no bias, as Adapter.forward reads it

    def forward(self, x):
        return x if self.identity else x.new_zeros(())  # zero broadcasts against the delta

    def extra_repr(self):
        return "identity" if self.identity else "zero"


class Shortcut(lora.LoRALinear):
    """out = F x + scaling * B A dropout(x), F the identity (s_res1, s_res2) or zero (s_in, s_cut); d -> d."""

    def __init__(self, kind, d, r=8, alpha=8.0, dropout=0.0, rslora=False, dtype=None, device=None):
        nn.Module.__init__(self)  # no nn.Linear to wrap: lora.Adapter's state and LoRA's weights, directly
        if kind not in TARGETS:
            raise ValueError(f"unknown shortcut '{kind}'; choose from {', '.join(TARGETS)}")
        self.kind = kind
        self.base = Fixed(identity=kind.startswith("s_res"))
        self._init_state(d, d, device)
        self._init_lora(r, alpha, dropout, rslora, dtype, device)

    def extra_repr(self):
        return f"{self.kind}, " + super().extra_repr()


def split_targets(targets):
    """(LoRA target names, shortcut names) of a comma-separated string or a list."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    return [t for t in names if t not in TARGETS], [t for t in names if t in TARGETS]


def encoder_layers(model):
    """[(path, layer)] of a BERT/RoBERTa-style post-LN encoder, in order; ValueError for any other layout."""
    layers = [(p, m) for p, m in model.named_modules() if re.search(r"\.layer\.\d+$", p)]
    fits = layers and all(isinstance(getattr(getattr(m, "attention", None), "output", None), nn.Module)
                          and isinstance(getattr(m.attention.output, "LayerNorm", None), nn.LayerNorm)
                          and isinstance(getattr(getattr(m, "output", None), "LayerNorm", None), nn.LayerNorm)
                          for _, m in layers)
    if not fits:
        raise ValueError(f"shortcut targets ({', '.join(TARGETS)}) need a BERT/RoBERTa-style post-LN encoder "
                         f"(encoder.layer.N.attention.output and .output with their LayerNorm); "
                         f"{type(model).__name__} has none")
    if any(getattr(m, "chunk_size_feed_forward", 0) for _, m in layers):
        raise ValueError("shortcut targets need the FFN applied in one piece (config.chunk_size_feed_forward = 0)")
    return layers


class Taps:
    """What the cross-layer shortcuts read, kept for one model call: each layer's input (for s_in) and FFN input
    (for s_cut of the next layer). Cleared by a forward hook on the model when the call ends."""

    def __init__(self):
        self.layer_in, self.ffn_in = {}, {}

    def clear(self, *_):
        self.layer_in.clear()
        self.ffn_in.clear()


def _with_residual(args, kwargs, change):
    """The sub-layer output modules take (hidden_states, input_tensor): replace input_tensor by change(it)."""
    if len(args) >= 2:
        return (args[0], change(args[1]), *args[2:]), kwargs
    return args, {**kwargs, "input_tensor": change(kwargs["input_tensor"])}


def _keep_layer_in(taps, i, module, args, kwargs):
    taps.layer_in[i] = args[0] if args else kwargs["hidden_states"]


def _attention_sum(taps, i, module, args, kwargs):
    """attention.output of layer i: x -> s_res1(x) (+ s_cut(layer i-1's FFN input))."""
    def change(x):
        y = module.s_res1(x) if hasattr(module, "s_res1") else x
        return y + module.s_cut(taps.ffn_in[i - 1]) if hasattr(module, "s_cut") else y
    return _with_residual(args, kwargs, change)


def _ffn_sum(taps, i, keep, module, args, kwargs):
    """output of layer i: a -> s_res2(a) (+ s_in(layer i's input)); keeps a for the next layer's s_cut."""
    def change(a):
        if keep:
            taps.ffn_in[i] = a
        y = module.s_res2(a) if hasattr(module, "s_res2") else a
        return y + module.s_in(taps.layer_in[i]) if hasattr(module, "s_in") else y
    return _with_residual(args, kwargs, change)


def attach(model, kinds, make_shortcut, token_mask):
    """Add shortcuts `kinds` to every layer of `model` (s_cut from layer 1 on) and the pre-hooks that wire them in.
    make_shortcut(kind, d, like) builds one, `like` a weight of the layer for dtype and device.
    Returns {path: shortcut} ordered by layer, then by TARGETS order."""
    layers = encoder_layers(model)
    taps = Taps()
    out = {}
    for i, (path, layer) in enumerate(layers):
        d, like = layer.output.LayerNorm.normalized_shape[0], layer.output.LayerNorm.weight
        for kind in TARGETS:
            if kind in kinds and not (kind == "s_cut" and i == 0):
                out[f"{path}.{HOMES[kind]}.{kind}"] = shortcut = make_shortcut(kind, d, like)
                shortcut.token_mask = token_mask
                layer.get_submodule(HOMES[kind]).add_module(kind, shortcut)
        attn, ffn = layer.attention.output, layer.output
        keep = "s_cut" in kinds and i + 1 < len(layers)  # the next layer's s_cut reads this FFN input
        if hasattr(ffn, "s_in"):
            layer.register_forward_pre_hook(functools.partial(_keep_layer_in, taps, i), with_kwargs=True)
        if hasattr(attn, "s_res1") or hasattr(attn, "s_cut"):
            attn.register_forward_pre_hook(functools.partial(_attention_sum, taps, i), with_kwargs=True)
        if keep or hasattr(ffn, "s_res2") or hasattr(ffn, "s_in"):
            ffn.register_forward_pre_hook(functools.partial(_ffn_sum, taps, i, keep), with_kwargs=True)
    model.register_forward_hook(taps.clear, always_call=True)
    return out


def layer_of(path):
    return int(re.search(r"\.layer\.(\d+)\.", path).group(1))


def inject(model, targets, r=8, alpha=8.0, dropout=0.0, rslora=False):
    """LoRA (lora.LoRALinear) on the linear targets and `Shortcut`s on the shortcut targets, all with the same
    r, alpha, dropout and scaling; freezes all but adapters and head as lora.inject does.
    Returns {path: adapter} ordered by layer, LoRA modules (in lora.TARGETS order) before shortcuts."""
    linear, kinds = split_targets(targets)
    make = functools.partial(lora.LoRALinear, r=r, alpha=alpha, dropout=dropout, rslora=rslora)
    if not kinds:
        return lora.inject(model, linear, make)
    encoder_layers(model)  # refuse another layout before anything is changed
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"shortcut targets given twice: {kinds}")
    if linear:
        adapters = lora.inject(model, linear, make)
        token_mask = next(iter(adapters.values())).token_mask
    else:
        if any(isinstance(m, lora.Adapter) for m in model.modules()):
            raise ValueError("model already has adapters; refusing to wrap twice")
        adapters, token_mask = {}, lora.freeze(model)
    cuts = attach(model, kinds, lambda kind, d, like: Shortcut(kind, d, r, alpha, dropout, rslora, like.dtype,
                                                               like.device), token_mask)
    both = list(adapters.items()) + list(cuts.items())
    return dict(sorted(both, key=lambda item: layer_of(item[0])))  # stable: LoRA first within a layer


def export_merged(out_dir, model, adapters, tokenizer=None):
    """The merged export. Without shortcuts: lora.export_merged. With them: the model with the LoRA modules folded
    in (a plain Hugging Face directory that lacks the shortcuts) and FILE beside it with the shortcuts' lora_A and
    lora_B, their paths, r and scaling; `load_merged(out_dir)` rebuilds the trained model. Returns the shortcut
    paths."""
    cuts = {p: a for p, a in adapters.items() if isinstance(a, Shortcut)}
    if not cuts:
        lora.export_merged(out_dir, model, adapters, tokenizer)
        return []
    if len({(a.r, a.scaling) for a in cuts.values()}) != 1:
        raise ValueError("the shortcut export needs one r and scaling for all shortcuts")
    first = next(iter(cuts.values()))
    meta = {"paths": list(cuts), "r": first.r, "alpha": first.alpha, "scaling": first.scaling}
    tensors = {f"{p}.{n}": getattr(a, n).detach().contiguous() for p, a in cuts.items() for n in ("lora_A", "lora_B")}
    plain = type(model)(model.config)
    plain.load_state_dict(lora.merged_state_dict(model, adapters), strict=True)  # shortcut keys are left out

    def write(d):
        plain.save_pretrained(d)
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
        save_file(tensors, os.path.join(d, FILE), metadata={"shortcuts": json.dumps(meta)})
    lora._atomic_dir(out_dir, write)
    return list(cuts)


@torch.no_grad()
def load_merged(model_dir, model_cls=None):
    """Load what export_merged wrote: the plain model and, when FILE is there, its shortcuts wired in again
    (inactive, in eval mode). Returns (model, {path: shortcut})."""
    if model_cls is None:
        from transformers import AutoModelForSequenceClassification as model_cls
    model = model_cls.from_pretrained(model_dir).eval()
    path = os.path.join(model_dir, FILE)
    if not os.path.exists(path):
        return model, {}
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["shortcuts"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    kinds = {p.rsplit(".", 1)[1] for p in meta["paths"]}
    cuts = attach(model, kinds, lambda kind, d, like: Shortcut(kind, d, meta["r"], meta["alpha"], dtype=like.dtype,
                                                               device=like.device), token_mask=None)
    if list(cuts) != meta["paths"]:
        raise ValueError(f"{path} does not match the model's layers: {sorted(set(cuts) ^ set(meta['paths']))[:3]}")
    for p, s in cuts.items():
        s.scaling = meta["scaling"]  # alpha/r or alpha/sqrt(r) (rsLoRA): the one trained with
        s.lora_A.copy_(tensors[f"{p}.lora_A"])
        s.lora_B.copy_(tensors[f"{p}.lora_B"])
        s.set_active(False)
    return model, cuts
