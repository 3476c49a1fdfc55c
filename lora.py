"""LoRA adapters (Hu et al. 2021) with built-in importance accumulators (DynaLoRA, Brouwers et al. 2024).

Holds:
- `Adapter`: what LoRA and VeRA share. It wraps a frozen `nn.Linear`, adds `delta(x)` to its output,
  keeps the module's importance accumulators, and has one switch for being trained or not (`set_active`).
- `LoRALinear`: h = W x + b + scaling * B A dropout(x), scaling = alpha / r (or alpha / sqrt(r), rsLoRA).
- `inject`: swaps the targeted linears of a Hugging Face encoder for adapters and freezes the rest.
- `merge` / `unmerge`, safetensors save/load, the PEFT export (`write_peft` is shared with VeRA's) and the
  merged Hugging Face export.

Importance accumulators (paper section 3.1): running sums and their counts, kept on the module's device;
nothing here reads them back to the host, so tracking adds no synchronisation to the training step.
importance.scores divides each sum by its count (a mean per token or per pass), so that modules measured
on different numbers of tokens or passes compare fairly:
- `fwd_score` / `fwd_count`: sum over real (non-padding) training tokens of ||h||_2 and the number of those
  tokens, with h = (W + dW) x the module's output without its bias, as the paper writes eq. 1. (The bias is
  a constant vector per module; leaving it in would add the same offset to every token and blur the ranking.)
- `grad_score` / `grad_count`: sum over real tokens of ||dL/dh||_2, the gradient flowing into the module's
  output. Training records it for every module that backward reaches, active or not; backward stops at the
  lowest active module, so the modules below it are measured by importance.probe before each re-allocation.
- `param_grad_score` / `param_grad_count`: sum over backward passes of the adapter's own gradient norms
  (||grad A|| + ||grad B|| for LoRA, the HeteroLoRA proxy) and the number of passes. Only active modules have
  adapter gradients in training; the re-allocation probe measures the others.
- `snip_score` / `snip_count`: sum over backward passes of sum |theta * grad theta| over the adapter's own
  weights (SNIP, Lee et al. 2019, a HeteroLoRA proxy) and the number of passes; recorded as param_grad is.
- `synflow_score` / `synflow_count`: SynFlow (Tanaka et al. 2020), data-free; written only by importance.probe.
- `n_updates`: optimizer updates this module received (C in eq. 3), counted by allocate.Allocation.step.
Flags `track_forward`, `track_grad`, `track_param_grad` and `track_snip` switch each sum on; all are off by default
and cost nothing then. Only training passes count: in eval mode or under torch.no_grad() nothing accumulates.
Padding: `inject` registers a forward pre-hook on the model that hands the `attention_mask` of each call to
its adapters (`TokenMask`), so a plain `model(**batch)` in training mode counts real tokens only. Norms are
taken in float32 whatever the activation dtype.
"""
import functools
import json
import math
import os
import re
import shutil
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# short target name -> regex on the module path, one table per model family; `targets_for` picks it by the model's
# config.model_type, never by trying every table on the module names
TARGETS = {  # BERT, RoBERTa and their kin share these names
    "query": r"\.attention\.self\.query$",
    "key": r"\.attention\.self\.key$",
    "value": r"\.attention\.self\.value$",
    "attn_out": r"\.attention\.output\.dense$",
    "ffn_in": r"\.intermediate\.dense$",
    "ffn_out": r"\.layer\.\d+\.output\.dense$",
}
LLAMA_TARGETS = {  # Llama, Mistral, Qwen2/3: attention projections and the gated MLP
    "q_proj": r"\.self_attn\.q_proj$",
    "k_proj": r"\.self_attn\.k_proj$",
    "v_proj": r"\.self_attn\.v_proj$",
    "o_proj": r"\.self_attn\.o_proj$",
    "gate_proj": r"\.mlp\.gate_proj$",
    "up_proj": r"\.mlp\.up_proj$",
    "down_proj": r"\.mlp\.down_proj$",
}
OPT_TARGETS = {
    "q_proj": r"\.self_attn\.q_proj$",
    "k_proj": r"\.self_attn\.k_proj$",
    "v_proj": r"\.self_attn\.v_proj$",
    "out_proj": r"\.self_attn\.out_proj$",
    "fc1": r"\.layers\.\d+\.fc1$",
    "fc2": r"\.layers\.\d+\.fc2$",
}
FAMILIES = {  # family -> (table, default targets: the query and value projections as in the papers, example path)
    "encoder": (TARGETS, "query,value", "BERT/RoBERTa-style module names such as encoder.layer.0.attention.self.query"),
    "llama": (LLAMA_TARGETS, "q_proj,v_proj", "Llama-style module names such as model.layers.0.self_attn.q_proj"),
    "opt": (OPT_TARGETS, "q_proj,v_proj", "OPT module names such as model.decoder.layers.0.self_attn.q_proj"),
}
MODEL_TYPES = {  # config.model_type -> family
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), "encoder"),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3"), "llama"),
    "opt": "opt",
}
HEAD_NAMES = ("classifier", "score")  # the task head of HF *ForSequenceClassification models


SCORES = ("fwd", "grad", "param_grad", "snip", "synflow")  # each has a <name>_score sum and a <name>_count


class TokenMask:
    """Hands the attention mask of each model call to the adapters, so that the scores skip padding.

    `inject` registers it as a forward pre-hook (it reads `attention_mask`) and `clear` as a forward hook on
    the model. The mask lives only during the call; backward hooks get it bound when they are registered.
    """

    def __init__(self):
        self.mask = None  # (batch, seq), 1 for real tokens

    def __call__(self, module, args, kwargs):
        self.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    def clear(self, module, args, output):
        self.mask = None

    def weights(self, h):
        """(batch, seq) float32 real-token weights for h (batch, seq, features), or None: every position counts."""
        m = self.mask
        return m.to(torch.float32) if m is not None and tuple(m.shape) == tuple(h.shape[:-1]) else None


def _masked_norm_sum(t, weights):
    """(sum over positions of ||t||_2 in float32, number of positions counted), both on t's device."""
    norms = torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32)
    if weights is None:
        return norms.sum(), norms.numel()
    return (norms * weights).sum(), weights.sum()


class Adapter(nn.Module):
    """A frozen nn.Linear plus a trainable delta; subclasses define `delta(x)` and `adapter_params()`."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if isinstance(base, Adapter) or not isinstance(base, nn.Linear):
            raise TypeError(f"can only wrap an nn.Linear once, got {type(base).__name__}")
        self.base = base
        self.base.requires_grad_(False)
        self._init_state(base.in_features, base.out_features, base.weight.device)

    def _init_state(self, in_features, out_features, device):
        """Switches and importance accumulators; also used by adapters whose frozen part is no nn.Linear
        (shortcuts.Shortcut)."""
        self.in_features, self.out_features = in_features, out_features
        self.active = True    # trained (requires grad) or not; an inactive adapter still adds its delta
        self.merged = False
        self.track_forward = False     # fwd_score
        self.track_grad = False        # grad_score
        self.track_param_grad = False  # param_grad_score
        self.track_snip = False        # snip_score
        self.token_mask = None         # a TokenMask shared by the model's adapters (set by inject)
        for name in SCORES:
            self.register_buffer(f"{name}_score", torch.zeros((), device=device))
            self.register_buffer(f"{name}_count", torch.zeros((), dtype=torch.float64, device=device))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long, device=device))

    def _init_hooks(self):
        # called by subclasses once their parameters exist, and again after a copy (deepcopy drops tensor hooks)
        for i, p in enumerate(self.adapter_params()):
            was = p.requires_grad
            p.requires_grad_(True)  # a hook needs it; the hook stays through later set_active switches
            p.register_hook(functools.partial(self._param_grad_hook, i))  # this pass's gradient, not .grad
            p.requires_grad_(was)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_hooks()

    def forward(self, x):
        h = self.base(x)
        if not self.merged:
            h = h + self.delta(x).to(h.dtype)  # under autocast VeRA's float32 vectors would widen h
        if self.training and torch.is_grad_enabled() and (self.track_forward or self.track_grad):
            weights = self.token_mask.weights(h) if self.token_mask is not None else None
            if self.track_forward:
                with torch.no_grad():
                    y = h.detach() if self.base.bias is None else h.detach() - self.base.bias  # (W + dW) x, eq. 1
                    total, n = _masked_norm_sum(y, weights)
                    self.fwd_score += total
                    self.fwd_count += n
            if self.track_grad and h.requires_grad:
                h.register_hook(functools.partial(self._out_grad_hook, weights))
        return h

    def _out_grad_hook(self, weights, g):
        with torch.no_grad():
            total, n = _masked_norm_sum(g, weights)
            self.grad_score += total
            self.grad_count += n

    def _param_grad_hook(self, i, g):
        # one count per backward pass, from the first adapter parameter's hook (i == 0)
        if self.track_param_grad and self.training:
            with torch.no_grad():
                self.param_grad_score += torch.linalg.vector_norm(g, dtype=torch.float32)
                if i == 0:
                    self.param_grad_count += 1
        if self.track_snip and self.training:
            with torch.no_grad():  # sum |theta * grad|: SNIP's connection sensitivity, summed over the weight
                self.snip_score += torch.linalg.vector_norm(self.adapter_params()[i].detach() * g, ord=1,
                                                            dtype=torch.float32)
                if i == 0:
                    self.snip_count += 1

    def set_active(self, active: bool):
        """The one switch: an inactive adapter has no grad, is skipped by optimizers, saves no activations."""
        self.active = bool(active)
        for p in self.adapter_params():
            p.requires_grad_(self.active)
            if not self.active:
                p.grad = None

    def reset_scores(self):
        for name in SCORES:
            getattr(self, f"{name}_score").zero_()
            getattr(self, f"{name}_count").zero_()

    def delta_weight(self):
        raise NotImplementedError

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, active={self.active}, merged={self.merged}"


class LoRALinear(Adapter):
    def __init__(self, base: nn.Linear, r=8, alpha=8.0, dropout=0.0, rslora=False):
        super().__init__(base)
        self._init_lora(r, alpha, dropout, rslora, base.weight.dtype, base.weight.device)

    def _init_lora(self, r, alpha, dropout, rslora, dtype, device):
        if int(r) != r or r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {r}")
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / (math.sqrt(self.r) if rslora else self.r)
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in the LoRA paper's loralib
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._init_hooks()

    def adapter_params(self):
        return [self.lora_A, self.lora_B]

    def delta(self, x):
        # inactive: no dropout, so nothing (not even a mask) is saved for a backward it will not have
        x = self.dropout(x) if self.active else x
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling  # (..., in) -> (..., r) -> (..., out)

    def delta_weight(self):
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)


def targets_for(model):
    """(table: short target name -> module-path regex, default targets, example path) of the model's family, by its
    config.model_type; a plain nn.Module without a Hugging Face config gets the BERT/RoBERTa table."""
    config = getattr(model, "config", None)
    if config is None:
        return FAMILIES["encoder"]
    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"no adapter target names for model type '{config.model_type}' ({type(model).__name__}); "
                         f"known types: {', '.join(MODEL_TYPES)}")
    return FAMILIES[MODEL_TYPES[config.model_type]]


LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")  # encoder.layer.N. (BERT, RoBERTa) or layers.N. (decoders)


def layer_index(path):
    """The layer number in a module path (encoder.layer.3..., model.layers.3...), -1 outside the layers."""
    m = LAYER.search(path)
    return int(m.group(1)) if m else -1


def inject(model, targets, make_adapter):
    """Swap every targeted nn.Linear of `model` for `make_adapter(linear)`; freeze all but adapters and head.

    `targets` is a comma-separated string or list of short names from the model family's table (targets_for:
    TARGETS for BERT/RoBERTa, LLAMA_TARGETS, OPT_TARGETS), or "all".
    Also registers a TokenMask on the model (a forward pre-hook reading `attention_mask`, and a forward hook
    clearing it), so that the adapters' importance scores count real tokens only.
    Returns {module path: adapter}, ordered by layer, then by target order in the table.
    """
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    table, _, example = targets_for(model)
    names = list(table) if names == ["all"] else names
    unknown = [t for t in names if t not in table]
    if unknown or not names:
        raise ValueError(f"unknown target module(s) {unknown}; choose from {', '.join(table)} or 'all'")
    if any(isinstance(m, Adapter) for m in model.modules()):
        raise ValueError("model already has adapters; refusing to wrap twice")
    found = []
    for path, module in model.named_modules():
        for ti, t in enumerate(names):
            if isinstance(module, nn.Linear) and re.search(table[t], path):
                found.append((layer_index(path), list(table).index(t), path))
    if not found:
        raise ValueError(f"no nn.Linear in {type(model).__name__} matches targets {names} "
                         f"(expected {example})")
    token_mask = freeze(model)
    adapters = {}
    for _, _, path in sorted(found):
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        adapters[path] = make_adapter(getattr(parent, child))
        adapters[path].token_mask = token_mask
        setattr(parent, child, adapters[path])
    return adapters


def freeze(model):
    """Freeze all but the task head and register a TokenMask on the model (a forward pre-hook reading
    `attention_mask`, a forward hook clearing it); returns the TokenMask for the adapters to be added."""
    head = head_parameters(model)  # fails before the model is changed if there is no task head
    model.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    token_mask = TokenMask()
    model.register_forward_pre_hook(token_mask, with_kwargs=True)  # scores count real tokens only
    model.register_forward_hook(token_mask.clear, always_call=True)
    return token_mask



def head_modules(model):
    """{path: module} of the task head, trained alongside the adapters: the *ForSequenceClassification head
    (`classifier` or `score`) and, for BERT-family models, the pooler it reads (dense + tanh on [CLS]). RoBERTa's
    head has that dense layer inside `classifier`; BERT's is the base model's pooler, which without this would
    stay frozen, and in checkpoints such as sentence-transformers' MiniLM it is untrained (they mean-pool)."""
    head = next((n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)), None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    prefix = getattr(model, "base_model_prefix", "")
    pooler = getattr(getattr(model, prefix, None), "pooler", None) if prefix else None
    return {**({f"{prefix}.pooler": pooler} if isinstance(pooler, nn.Module) else {}), head: getattr(model, head)}


def head_parameters(model):
    """The task head's parameters (see head_modules)."""
    return [p for m in head_modules(model).values() for p in m.parameters()]


def check_mergeable(adapters, what):
    """Refuse adapters whose frozen part is no nn.Linear (shortcuts.Shortcut): no plain weight can hold them."""
    fixed = [path for path, a in adapters.items() if not isinstance(a.base, nn.Linear)]
    if fixed:
        raise ValueError(f"{what}: {fixed[0]} is a shortcut adapter, which plain weights cannot hold; "
                         "shortcuts.export_merged writes it beside the merged model")


@torch.no_grad()
def merge(adapters):
    """W <- W + dW for every adapter; forward then uses the base layer alone. Explicit, never via .eval()."""
    check_mergeable(adapters, "merge")
    for a in adapters.values():
        if not a.merged:
            a.base.weight += a.delta_weight().to(a.base.weight.dtype)
            a.merged = True


@torch.no_grad()
def unmerge(adapters):
    for a in adapters.values():
        if a.merged:
            a.base.weight -= a.delta_weight().to(a.base.weight.dtype)
            a.merged = False


# ---------------------------------------------------------------- saving and export

def adapter_state_dict(model, adapters):
    """What training changed: adapter parameters, importance buffers and the head, keyed by module path."""
    sd = {}
    for path, a in adapters.items():
        for name, t in list(a.named_parameters(recurse=False)) + list(a.named_buffers(recurse=False)):
            sd[f"{path}.{name}"] = t.detach()
    for head, module in head_modules(model).items():
        for name, p in module.named_parameters():
            sd[f"{head}.{name}"] = p.detach()
    return sd


def _atomic_dir(final_dir, write):
    """Write a directory via a temp dir beside it and a rename, so a crash never leaves half a directory."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        write(tmp)
        umask_modes(tmp)
        if os.path.exists(final_dir):
            old = final_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def umask_modes(path):
    """Give `path` (a file, or a dir and all in it) the modes open() and mkdir() give under the umask:
    mkdtemp makes 0700 dirs and safetensors 0600 files, which a shared results folder cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~umask)
        return
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def save_file_atomic(tensors, path, metadata=None):
    tmp = f"{path}.tmp"
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        umask_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_adapters(path, model, adapters, metadata=None):
    """Adapters and head to one safetensors file (atomic). `metadata`: str -> str, e.g. the adapter config."""
    save_file_atomic(adapter_state_dict(model, adapters), path, metadata=metadata)


@torch.no_grad()
def load_adapters(path, model, adapters):
    """Load what save_adapters wrote into an injected model; every key must match in name and shape."""
    sd = load_file(path)
    own = adapter_state_dict(model, adapters)
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, t in own.items():
        if t.shape != sd[k].shape:
            raise ValueError(f"{path}: {k} has shape {tuple(sd[k].shape)}, model expects {tuple(t.shape)}")
        t.copy_(sd[k])


def export_peft(out_dir, model, adapters, base_model_name_or_path=""):
    """LoRA adapters in PEFT's on-disk format, loadable by peft.PeftModel.from_pretrained(base, out_dir)."""
    first = next(iter(adapters.values()))
    if not all(isinstance(a, LoRALinear) for a in adapters.values()):
        raise ValueError("the PEFT export is for LoRA adapters")
    check_mergeable(adapters, "the PEFT export")
    if len({(a.r, a.alpha, a.scaling) for a in adapters.values()}) != 1:
        raise ValueError("the PEFT export needs one r and alpha for all adapters")
    sd = {}
    for path, a in adapters.items():
        sd[f"base_model.model.{path}.lora_A.weight"] = a.lora_A.detach()
        sd[f"base_model.model.{path}.lora_B.weight"] = a.lora_B.detach()
    config = {
        "peft_type": "LORA", "r": first.r, "lora_alpha": first.alpha,
        "use_rslora": not math.isclose(first.scaling, first.alpha / first.r),
        "lora_dropout": first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0, "init_lora_weights": True,
    }
    write_peft(out_dir, model, adapters, sd, config, base_model_name_or_path)


def write_peft(out_dir, model, adapters, sd, config, base_model_name_or_path=""):
    """What the LoRA and VeRA exports share: the head modules as `modules_to_save`, the target modules, and the
    directory PEFT reads (adapter_model.safetensors, adapter_config.json), written atomically."""
    heads = head_modules(model)
    sd = dict(sd)
    for head, module in heads.items():
        for name, p in module.named_parameters():
            sd[f"base_model.model.{head}.{name}"] = p.detach()
    config = {
        **config, "task_type": "SEQ_CLS",
        "target_modules": sorted(adapters),  # full paths: "output.dense" alone would match two kinds
        "modules_to_save": list(heads), "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }

    def write(d):
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "adapter_model.safetensors"))
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)
    _atomic_dir(out_dir, write)


@torch.no_grad()
def merged_state_dict(model, adapters):
    """The model's state dict with every adapter folded into a plain Linear: W + dW, original key names.
    A shortcut adapter (shortcuts.py) has no weight to fold into: its keys are left out."""
    sd = {}
    prefixes = {path + ".": a for path, a in adapters.items()}
    for k, v in model.state_dict().items():
        path, _, leaf = k.rpartition(".")
        owner = path.rsplit(".base", 1)[0] if path.endswith(".base") else None
        if owner in adapters:
            a = adapters[owner]
            if leaf == "weight" and not a.merged:
                d = a.delta_weight()  # a low-precision frozen W (--precision) is merged in the adapter's float32
                v = v.to(torch.promote_types(v.dtype, d.dtype)) + d
            sd[f"{owner}.{leaf}"] = v
        elif not any(k.startswith(p) for p in prefixes):
            sd[k] = v
    return sd


def export_merged(out_dir, model, adapters, tokenizer=None):
    """A plain Hugging Face model directory with the adapters merged (AutoModel...from_pretrained loads it)."""
    check_mergeable(adapters, "the merged export")
    sd = merged_state_dict(model, adapters)
    plain = type(model)(model.config)
    plain.load_state_dict(sd, strict=True)

    def write(d):
        plain.save_pretrained(d)
        if tokenizer is not None:
            tokenizer.save_pretrained(d)
    _atomic_dir(out_dir, write)
