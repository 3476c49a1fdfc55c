"""Exact training-memory accounting of one step, and the depth cost model of depth-aware allocation.

With the base frozen, backward stops below the lowest module that requires grad, so the memory of a DynaLoRA
step is set by the depth of its lowest active module more than by how many modules are active. This file
counts that memory from the tensors themselves, never from a process-level reading:
- `storage_bytes`, `SavedForBackward`, `parameter_bytes`, `optimizer_bytes`: the accounting bench/memory.py
  builds its tables from. Saved for backward = every storage autograd saves in the forward
  (torch.autograd.graph.saved_tensors_hooks), each once, minus parameter and buffer storages.
- `adamw_state_bytes`: what torch.optim.AdamW allocates for parameters once each has stepped
  (exp_avg and exp_avg_sq like the parameter, and a scalar step).
- `depth_costs`: the cost model. For d = 0 .. L (the layers holding adapter modules), the training memory of
  one step on one batch with every adapter module of the top d layers active: saved for backward (measured,
  one forward each), plus gradients and AdamW state of those modules and the head (from their sizes).
  d = 0 is the head alone, d = L is LoRA. Adding an active module never saves less, so cost d bounds every
  allocation whose modules all lie in the top d layers, and equals it when every module there is active.
- `depth_for_budget`: the largest depth whose cost is within a fraction of LoRA's.
"""
import torch

import allocate
import importance


def storage_bytes(tensors):
    """Bytes of the distinct storages behind `tensors` (a view counts its whole storage, once). Storages are told
    apart by their StorageImpl (`_cdata`), not by data_ptr, which is 0 for every tensor on the meta device."""
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen.setdefault(s._cdata, s.nbytes())
    return sum(seen.values())


class SavedForBackward:
    """Pack hook that records each storage autograd saves, once, except parameter and buffer storages.

    It keeps a reference to each storage until `bytes()` is read, so a freed address cannot be reused and
    miscounted; every storage saved by this model's forward is kept alive by the graph anyway.
    """

    def __init__(self, model):
        self.exclude = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers())}
        self.storages = {}

    def pack(self, t):
        s = t.untyped_storage()
        if s._cdata not in self.exclude:
            self.storages.setdefault(s._cdata, s)
        # the same storage without the autograd history: the tensor itself would make a cycle (node -> saved
        # output -> its grad_fn -> node) that only a backward breaks, so a forward with no backward (the cost
        # model) would keep every graph it built alive
        return t.detach()

    def bytes(self):
        n = sum(s.nbytes() for s in self.storages.values())
        self.storages = {}
        return n


def parameter_bytes(model, adapters):
    """(frozen base weights, trainable now, other adapter state) in bytes; buffers of the base count as frozen."""
    base = {id(t) for a in adapters.values() for t in list(a.base.parameters()) + list(a.base.buffers())}
    owned = {id(t) for a in adapters.values() for t in list(a.parameters()) + list(a.buffers())} - base
    frozen = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in owned and not t.requires_grad]
    trainable = [t for t in model.parameters() if t.requires_grad]
    other = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) in owned and not t.requires_grad]
    return storage_bytes(frozen), storage_bytes(trainable), storage_bytes(other)


def optimizer_bytes(opt):
    """Bytes of every tensor in the optimizer's state: a torch optimizer or an allocate.LocalAdamW."""
    if isinstance(opt, allocate.LocalAdamW):
        opts = list(opt.optimizers.values()) + ([opt.head] if opt.head is not None else [])
    else:
        opts = [opt]
    return storage_bytes([v for o in opts for st in o.state.values() for v in st.values() if torch.is_tensor(v)])


def gradient_bytes(params):
    """What backward allocates as .grad for `params`: one tensor of each parameter's shape and dtype."""
    return sum(p.numel() * p.element_size() for p in params)


def adamw_state_bytes(params):
    """torch.optim.AdamW's state once every parameter in `params` has stepped: exp_avg and exp_avg_sq shaped
    like the parameter, and a scalar `step` (float32, or float64 when that is the default dtype)."""
    step = torch.empty((), dtype=torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32)
    return sum(2 * p.numel() * p.element_size() + step.element_size() for p in params)


def depth_costs(model, adapters, batch, head_params):
    """The cost model: one dict per depth d = 0 .. L with the bytes of one training step on `batch`
    when every adapter module of the top d layers is active (allocate.top_layers):
      saved: saved for backward, measured by a training-mode forward under saved_tensors_hooks;
      grads: gradients of those modules' adapter parameters and of `head_params`;
      optim: AdamW state of the same parameters (the steady state once each has been active);
      total: saved + grads + optim, the training memory a depth budget is counted in.

    `batch` is what the model takes as **kwargs, with labels; give the widest shape training will see.
    Wrap the call in the autocast context training uses: the saved dtypes follow it.
    The model is left as it was: active states, importance tracking flags, train/eval mode, gradients (None)
    and the random number generators (dropout draws) are restored, and nothing is accumulated.
    """
    names, mods = list(adapters), list(adapters.values())
    layers = sorted({allocate.layer_of(n) for n in names})
    rec = SavedForBackward(model)
    costs = []
    with importance.left_as_found(model, adapters):  # the forwards' dropout draws leave no trace
        for a in mods:
            a.track_forward = a.track_grad = a.track_param_grad = False
        model.train()
        for d in range(len(layers) + 1):
            allocate.apply(adapters, allocate.top_layers(names, d))
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
                out = model(**batch)
            if getattr(out, "loss", None) is None:
                raise ValueError("the cost model's batch needs labels so that the model returns a loss")
            saved = rec.bytes()
            del out  # frees the graph and what it saved before the next depth
            trained = [p for a in mods if a.active for p in a.adapter_params()] + list(head_params)
            grads, optim = gradient_bytes(trained), adamw_state_bytes(trained)
            costs.append(dict(depth=d, saved=saved, grads=grads, optim=optim, total=saved + grads + optim))
    return costs


def depth_for_budget(costs, fraction):
    """The largest depth D >= 1 such that every depth from 1 to D costs at most `fraction` of LoRA's training
    memory (costs[-1]), so that every allocation within the top D layers meets the budget. ValueError, one
    line, when not even the top layer fits."""
    lora_total, limit = costs[-1]["total"], fraction * costs[-1]["total"]
    depth = 0
    while depth + 1 < len(costs) and costs[depth + 1]["total"] <= limit:
        depth += 1
    if depth == 0:
        need = costs[0] if costs[0]["total"] > limit else costs[1]
        what = "the head alone needs" if need is costs[0] else "the top layer's adapter modules and the head need"
        raise ValueError(f"no allocation fits {fraction:g} of LoRA's training memory ({limit / 2**20:.3g} of "
                         f"{lora_total / 2**20:.3g} MiB): {what} {need['total'] / 2**20:.3g} MiB "
                         f"({need['total'] / lora_total:.3f} of LoRA's)")
    return depth
