"""Exact training-memory accounting for one step on RoBERTa-base, no GPU needed (DynaLoRA, Brouwers et al. 2024).

For each configuration one training step runs on CPU (forward with loss, backward, AdamW step) and every byte
it keeps is counted from the tensors themselves, not from a process-level memory reading:
- saved for backward: every tensor autograd saves in the forward (torch.autograd.graph.saved_tensors_hooks),
  each underlying storage once, minus storages of parameters and buffers (counted as parameters);
- parameters: frozen base weights, trainable (requires_grad now), and other adapter state (inactive adapters'
  parameters and adapter buffers such as VeRA's shared projections), which exists only because of training;
- gradients: .grad actually allocated after backward; optimizer state: AdamW tensors after the step;
- training overhead = everything but the frozen base weights; total = overhead + frozen base weights.
With a GPU present, torch.cuda.max_memory_allocated over the step is added as a column.

Depth-aware DynaLoRA rows (train.py --max-depth): the real allocator choosing among the modules of the top D
layers only, D the smallest depth holding K modules (8 of 12 layers for 16/24, 4 for 8/24). The cost model
train.py budgets with (memory.depth_costs, measured once on the LoRA model) predicts each of their allocations,
shown next to the measured bytes, and the target (16/24: saved for backward <= 0.67x LoRA's) is a verdict.

The model is RobertaConfig() (RoBERTa-base shapes) with random weights and random token ids: sizes do not
depend on the values. DynaLoRA budgets scale with --layers (16 and 8 of 24 become round(16/24 M), round(8/24 M)).

  python bench/memory.py                      # RoBERTa-base, batch 16, seq 128 (a few minutes on 2 CPU cores)
  python bench/memory.py --quick --json m.json

Projections for models this machine cannot hold (--config): the same accounting on the meta device, where tensors
have shapes and dtypes but no storage, so nothing is allocated, for LoRA on every linear vs DynaLoRA:

  python bench/memory.py --config llama-2-7b --device meta --precision bf16 --batch-size 1 --seq-len 2048
  python bench/memory.py --config roberta-large --device meta --precision bf16 --seq-len 512
  python bench/memory.py --config PATH/config.json --device cpu --like cpu   # the same rows measured for real

NAME_OR_JSON: a config.json path, a name from bench/configs/ (roberta-base, roberta-large, llama-2-7b), or a Hugging
Face model directory or hub name. The meta device has no autocast and no fused attention kernel of its own, so the
run imitates a device (--like): cuda (the default) applies CUDA autocast's casting lists and the fused attention
kernel that CUDA's flash and memory-efficient SDPA use (saving query, key, value, output and the log-sum-exp, not
the attention matrix); cpu applies CPU autocast's lists and the attention kernel CPU SDPA picks, so that a meta run
can be checked against a real CPU run number for number.
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import re
import statistics
import sys
import time

# Before torch starts OpenMP: waiting threads sleep instead of spinning. On this shared 2-core machine a thread
# spinning at a barrier for a descheduled sibling made steps ~5x slower. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the flat repo root
import allocate  # noqa: E402
import importance  # noqa: E402
import lora  # noqa: E402
import memory  # noqa: E402  (the repo root's memory.py: the accounting and the depth cost model)
import precision  # noqa: E402
import vera  # noqa: E402
from memory import SavedForBackward, optimizer_bytes, parameter_bytes, storage_bytes  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--batch-size", type=int, default=None, help="sequences per batch (default 16; --quick: 8)")
p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128; --quick: 128)")
p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12 = RoBERTa-base; --quick: 4)")
p.add_argument("--draws", type=int, default=None, help="random placements per dynamic budget, one step each (default 12; --quick: 6)")
p.add_argument("--active", default="16,8", help="DynaLoRA budgets as K of 24 modules, comma-separated (scaled to --layers)")
p.add_argument("--lora-r", type=int, default=8, help="LoRA rank r (alpha = r, as the LoRA paper's RoBERTa runs)")
p.add_argument("--vera-r", type=int, default=1024, help="VeRA rank r")
p.add_argument("--dropout", type=float, default=0.0, help="adapter input dropout, LoRA and VeRA (train.py's default 0)")
p.add_argument("--quick", action="store_true", help="under a minute: 4 layers, batch 8, seq 128, 6 draws (flags still override)")
p.add_argument("--seed", type=int, default=0, help="seed for weights, tokens and the random placements")
p.add_argument("--device", default="auto", help="cpu, cuda or meta (--config only) (auto: cuda when present, which adds max_memory_allocated)")
p.add_argument("--config", default=None, help="project this model instead (NAME_OR_JSON, see above): LoRA on --targets vs DynaLoRA")
p.add_argument("--targets", default="all", help="--config: adapted linears of the model's family (default all)")
p.add_argument("--precision", default="fp32", choices=list(precision.PRECISIONS), help="--config: as train.py --precision")
p.add_argument("--like", default="cuda", choices=["cuda", "cpu"], help="--config --device meta: whose autocast lists and attention kernel to apply")
p.add_argument("--json", default=None, help="also write every number (bytes) to this JSON file")
args = p.parse_args()

quick = dict(batch_size=8, seq_len=128, layers=4, draws=6)
full = dict(batch_size=16, seq_len=128, layers=12, draws=12)
for k, v in (quick if args.quick else full).items():
    if getattr(args, k) is None:
        setattr(args, k, v)
for k in ("batch_size", "seq_len", "layers", "draws"):
    if getattr(args, k) < 1:
        p.error(f"--{k.replace('_', '-')} must be >= 1")
if args.seq_len > 510 and not args.config:
    p.error("--seq-len must be <= 510 (RobertaConfig() has 512 positions, two taken by the padding offset)")
device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                      "cpu" if args.device == "auto" else args.device)
cuda = device.type == "cuda"
M = 2 * args.layers  # query and value in every layer
budgets = sorted({max(1, min(M, round(int(k) * M / 24))) for k in args.active.split(",")}, reverse=True)
MiB = 2 ** 20
t_start = time.time()
load_start = os.getloadavg()[0]


def rss_mib():
    """This process's resident memory now (Linux /proc; None elsewhere): the benchmark's own footprint."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError):
        return None


def progress(msg):
    rss = rss_mib()
    print(f"[{time.time() - t_start:6.1f}s{'' if rss is None else f', RSS {rss:,.0f} MiB'}] {msg}", file=sys.stderr,
          flush=True)


# ----------------------------------------------------------------------------- models and the batch

def build(method):
    """(model, adapters) for one configuration, all parameters frozen except what the method trains."""
    from transformers import RobertaConfig, RobertaForSequenceClassification
    torch.manual_seed(args.seed)
    model = RobertaForSequenceClassification(RobertaConfig(num_labels=2, num_hidden_layers=args.layers))
    adapters = {}
    if method == "frozen":
        model.requires_grad_(False)
    elif method == "full":
        model.requires_grad_(True)
    elif method == "bitfit":  # BitFit (Zaken et al. 2021): every bias and the head
        head = set(map(id, lora.head_parameters(model)))
        for name, prm in model.named_parameters():
            prm.requires_grad_(name.endswith(".bias") or id(prm) in head)
    elif method == "lora":
        adapters = lora.inject(model, "query,value",
                               lambda lin: lora.LoRALinear(lin, r=args.lora_r, alpha=args.lora_r, dropout=args.dropout))
    elif method == "vera":
        adapters = vera.inject_vera(model, "query,value", r=args.vera_r, dropout=args.dropout)
    return model.to(device), adapters


g = torch.Generator().manual_seed(args.seed)
ids = torch.randint(3, 50265, (args.batch_size, args.seq_len), generator=g)  # 0-2 are <s>, <pad>, </s>
batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
         "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device)}


def optimizer_for(method, model, adapters, kind="global"):
    """The optimizer train.py would build (allocate.build_optimizer); LR values do not change any byte."""
    if adapters:
        return allocate.build_optimizer(kind, adapters, lora.head_parameters(model), lr=1e-4, total_steps=1000)[0]
    return allocate.build_optimizer("global", params=[q for q in model.parameters() if q.requires_grad],
                                    lr=1e-4, total_steps=1000)[0]


# ----------------------------------------------------------------------------- byte counting (../memory.py)

def train_step(model, adapters, opts, batch=batch, ctx=None):
    """One step (forward with loss under `ctx`, backward, every optimizer in `opts` steps); returns the byte counts.

    With two optimizers (global and local, dynamic configs) both step on the same gradients: the values
    they write do not matter here, only the state each one allocates.
    """
    model.train()
    rec = SavedForBackward(model)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), ctx or contextlib.nullcontext():
        loss = model(**batch).loss
    saved = rec.bytes()
    loss.backward()
    grads = storage_bytes([q.grad for q in model.parameters() if q.grad is not None])
    for o in opts:
        o.step()
    optim = [optimizer_bytes(o) for o in opts]
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    for o in opts:
        o.zero_grad(set_to_none=True)
    frozen, trainable, other = parameter_bytes(model, adapters)
    row = dict(saved=saved, frozen=frozen, trainable=trainable, adapter_other=other, grads=grads, optim=optim[0])
    if len(optim) > 1:
        row["optim_local"] = optim[1]
    row["overhead"] = saved + trainable + other + grads + optim[0]
    row["total"] = row["overhead"] + frozen
    if cuda:
        row["cuda_max_allocated"] = peak
    return row


def placement(names, active):
    """Active modules per layer, e.g. 'qv q. .v ..' = layer 0 both, layer 1 query, layer 2 value, layer 3 none."""
    on = set(active)
    layers = [""] * args.layers
    for n in names:
        layer = int(re.search(r"\.layer\.(\d+)\.", n).group(1))
        kind = n.rsplit(".", 1)[1][0]  # q or v
        layers[layer] += kind if n in on else "."
    return " ".join(layers)


def lowest_active_layer(names, active):
    return min(int(re.search(r"\.layer\.(\d+)\.", n).group(1)) for n in active)


# ----------------------------------------------------------------------------- projections (--config)

# autocast's casting lists (torch.amp docs, "Autocast Op Reference"), by the Python names these models call: the ops
# run in the low-precision dtype, and those run in float32. The meta device has no autocast: MetaDevice applies them.
LOW = {"cuda": {"linear", "matmul", "__matmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "addr", "mv",
                "conv1d", "conv2d", "conv3d", "prelu", "scaled_dot_product_attention"},
       "cpu": {"linear", "matmul", "__matmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "conv1d", "conv2d",
               "conv3d", "prelu", "scaled_dot_product_attention"}}
FP32 = {"cuda": {"layer_norm", "group_norm", "softmax", "log_softmax", "softmin", "cross_entropy", "nll_loss",
                 "mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits", "kl_div", "exp", "log",
                 "pow", "__pow__", "rsqrt", "reciprocal", "sum", "cumsum", "prod", "norm", "normalize", "softplus"},
        "cpu": {"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
                "binary_cross_entropy_with_logits", "kl_div", "prod"}}


def _cast(obj, dtype):
    if torch.is_tensor(obj) and obj.dtype in (torch.float16, torch.bfloat16, torch.float32) and obj.dtype != dtype:
        return obj.to(dtype)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


class MetaDevice(torch.overrides.TorchFunctionMode):
    """What a `like` device (cuda or cpu) would do that meta tensors cannot: autocast's casts (`dtype`: the autocast
    dtype, None for fp32), and the fused attention kernel. With the fused kernel autograd saves query, key, value,
    output and the log-sum-exp (torch's CPU flash kernel, whose meta function gives the shapes; CUDA's flash and
    memory-efficient kernels save the same tensors, plus a few bytes of RNG state under dropout); the math path the
    meta device takes by itself also saves the attention matrix. `like` cpu uses the fused kernel exactly when CPU
    SDPA would (torch._fused_sdp_choice on CPU tensors of the same shapes), cuda always."""

    def __init__(self, dtype, like):
        super().__init__()
        self.dtype, self.like = dtype, like

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.dtype is not None and name in LOW[self.like]:
            args, kwargs = _cast(args, self.dtype), {k: _cast(v, self.dtype) for k, v in kwargs.items()}
        elif self.dtype is not None and name in FP32[self.like]:
            args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        if name == "scaled_dot_product_attention" and self.fused(*args, **kwargs):
            return self.flash(*args, **kwargs)
        return func(*args, **kwargs)

    def fused(self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if self.like == "cuda":
            return True
        on_cpu = [torch.empty(t.shape, dtype=t.dtype).requires_grad_(t.requires_grad) for t in (q, k, v)]
        mask = None if attn_mask is None else torch.empty(attn_mask.shape, dtype=attn_mask.dtype)
        choice = torch._fused_sdp_choice(*on_cpu, mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        return choice == torch.nn.attention.SDPBackend.FLASH_ATTENTION.value

    @staticmethod
    def flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        # grouped-query attention (fewer key/value heads than query heads): the kernel reads them as they are
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


def load_config(name):
    """A transformers config from a config.json path, a name in bench/configs/, or a model directory or hub name."""
    from transformers import AutoConfig
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{name}.json")
    path = name if name.endswith(".json") else here
    if os.path.isfile(path):
        with open(path) as f:
            d = json.load(f)
        return AutoConfig.for_model(d.pop("model_type"), **d)
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        p.error(f"--config {name}: not a config.json, a name in bench/configs/ or a loadable model ({type(e).__name__})")


def project():
    """LoRA on --targets vs DynaLoRA for --config, one step per placement: the paper's placement (random over
    every layer), the top and the bottom modules in layer order, and depth-aware allocation (train.py --max-depth at
    the smallest depth D holding k modules: random placements among the modules of the top D layers, on a fresh
    model, so that its AdamW state is that of those modules only, as in training)."""
    from transformers import AutoModelForSequenceClassification
    config = load_config(args.config)
    config.num_labels = 2
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0  # decoders' score head needs one for batches > 1; the random tokens avoid it
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and args.seq_len > positions - (2 if config.model_type in ("roberta", "xlm-roberta") else 0):
        p.error(f"--seq-len {args.seq_len} is longer than {config.model_type}'s {positions} positions")
    low = None if args.precision == "fp32" else precision.PRECISIONS[args.precision]
    meta = device.type == "meta"
    ctx = (lambda: MetaDevice(low, args.like)) if meta else (lambda: precision.autocast(args.precision, device))
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len), generator=g)  # 0-2: specials, pad
    cfg_batch = {"input_ids": ids.to(device), "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device)}

    def build_lora():
        torch.manual_seed(args.seed)
        with torch.device(device):
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        adapters = lora.inject(model, args.targets, lambda lin: lora.LoRALinear(lin, r=args.lora_r, alpha=args.lora_r))
        importance.set_tracking(adapters, "forward")
        precision.cast_frozen(model, args.precision)
        return model, adapters

    def step(model, adapters, opts):
        return train_step(model, adapters, opts, batch=cfg_batch, ctx=ctx())

    def placements(model, adapters, opts, pool, k, n, gen, what):
        """Mean of n steps, each with k modules drawn uniformly from `pool` active."""
        draws = []
        for i in range(n):
            active = [pool[j] for j in allocate.uniform(torch.ones(len(pool)), k, gen)]
            allocate.apply(adapters, active)
            progress(f"DynaLoRA {k}/{m} {what} {i + 1}/{n}")
            draws.append(dict(step(model, adapters, opts), lowest_active_layer=min(map(allocate.layer_of, active))))
        mean = {key: statistics.mean(d[key] for d in draws) for key in draws[0] if key != "lowest_active_layer"}
        return dict(active=k, **mean, saved_min=min(d["saved"] for d in draws),
                    saved_max=max(d["saved"] for d in draws), draws=draws)

    out = {}
    model, adapters = build_lora()
    names = list(adapters)
    m = len(names)
    progress(f"LoRA {m}/{m}")
    opts = [optimizer_for("lora", model, adapters, "global"), optimizer_for("lora", model, adapters, "local")]
    out["lora"] = dict(label=f"LoRA r={args.lora_r}, {args.targets} ({m}/{m})", active=m, **step(model, adapters, opts))
    del model, adapters, opts
    for k in sorted({max(1, min(m, round(int(b) * m / 24))) for b in args.active.split(",")}, reverse=True):
        if k == m:
            continue
        model, adapters = build_lora()
        opts = [optimizer_for("lora", model, adapters, "global"), optimizer_for("lora", model, adapters, "local")]
        gen = torch.Generator().manual_seed(args.seed + 1000 * k)  # the paper's allocators spread it over every layer
        out[f"dynalora{k}_random"] = dict(label=f"DynaLoRA {k}/{m}, random (mean of {args.draws})",
                                          **placements(model, adapters, opts, names, k, args.draws, gen, "random"))
        for where in ("upper", "lower"):
            active = names[-k:] if where == "upper" else names[:k]
            allocate.apply(adapters, active)
            progress(f"DynaLoRA {k}/{m} {where} layers")
            out[f"dynalora{k}_{where}"] = dict(label=f"DynaLoRA {k}/{m}, {where} layers (from layer "
                                                     f"{min(map(allocate.layer_of, active))})", active=k,
                                               **step(model, adapters, opts))
        del model, adapters, opts
        model, adapters = build_lora()
        opts = [optimizer_for("lora", model, adapters, "global"), optimizer_for("lora", model, adapters, "local")]
        depth = allocate.min_depth(names, k)
        eligible = allocate.top_layers(names, depth)
        n = 1 if k == len(eligible) else args.draws  # all of the eligible modules: one placement
        out[f"dynalora{k}_depth"] = dict(label=f"DynaLoRA {k}/{m}, depth-aware: top {depth} layers"
                                               + (f" (mean of {n})" if n > 1 else ""), max_depth=depth,
                                         **placements(model, adapters, opts, eligible, k, n, gen, "depth-aware"))
        del model, adapters, opts
    for r in out.values():
        r["saved_ratio"] = r["saved"] / out["lora"]["saved"]
        r["total_ratio"] = r["total"] / out["lora"]["total"]
    import transformers
    unit, size = ("GiB", 2 ** 30) if out["lora"]["total"] > 2 ** 30 else ("MiB", 2 ** 20)
    print(f"# bench/memory.py --config {args.config}: training memory of one step, exact byte accounting")
    print(f"{datetime.date.today().isoformat()}; {config.model_type}, {getattr(config, 'num_hidden_layers', '?')} "
          f"layers, hidden {getattr(config, 'hidden_size', '?')}, {m} adapted linears ({args.targets}), LoRA "
          f"r={args.lora_r}; batch {args.batch_size} x seq {args.seq_len} random tokens, no padding; "
          f"{args.precision} ({'frozen weights in ' + args.precision + ', ' if low else ''}adapters, head, "
          f"gradients and AdamW state fp32); device {device}"
          f"{f' imitating {args.like} (autocast lists, attention kernel)' if meta else ''}; train mode; "
          f"AdamW; {args.draws} seeded random placements per row; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; wall time {time.time() - t_start:.0f} s")
    print()
    cols = ["saved for backward", "frozen weights", "trainable params", "other adapter state", "grads",
            "AdamW state", "training overhead", "total", "saved / LoRA", "total / LoRA"]
    print("| configuration | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in out.values():
        cells = [f"{r[c] / size:.3f}" for c in ("saved", "frozen", "trainable", "adapter_other", "grads", "optim",
                                                 "overhead", "total")]
        if "saved_min" in r:
            cells[0] += f" ({r['saved_min'] / size:.3f}-{r['saved_max'] / size:.3f})"
        print(f"| {r['label']} | " + " | ".join(cells) + f" | {r['saved_ratio']:.3f} | {r['total_ratio']:.3f} |")
    print()
    print(f"{unit} = 2^{30 if unit == 'GiB' else 20} bytes. AdamW state in its steady state grows to LoRA's once every module has been active; "
          "the rows show it after these steps. Not counted: transient buffers inside one op, the allocator's "
          "caching and fragmentation, and the CUDA context.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {**vars(args), "modules": m, "device": str(device),
                                  "torch": torch.__version__, "transformers": transformers.__version__},
                       "rows": out}, f, indent=1)


if args.config:
    project()
    sys.exit(0)
if device.type == "meta":
    p.error("--device meta needs --config (the RoBERTa-base rows run for real)")


# ----------------------------------------------------------------------------- the configurations

rows = {}


def free():
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


progress("frozen forward (no_grad)")
model, _ = build("frozen")
model.eval()
if cuda:
    torch.cuda.reset_peak_memory_stats(device)
with torch.no_grad():
    model(**batch)
frozen, _, _ = parameter_bytes(model, {})
rows["frozen_forward"] = dict(label="frozen forward only (no_grad)", active=None, saved=0, frozen=frozen, trainable=0,
                              adapter_other=0, grads=0, optim=0, overhead=0, total=frozen)
if cuda:
    rows["frozen_forward"]["cuda_max_allocated"] = torch.cuda.max_memory_allocated(device)
params_total = storage_bytes(list(model.parameters()))
attn = model.config._attn_implementation
del model
free()

for method, label in (("full", "full fine-tuning"), ("bitfit", "BitFit (biases + head)"),
                      ("lora", f"LoRA q,v r={args.lora_r}"), ("vera", f"VeRA q,v r={args.vera_r}")):
    progress(label)
    model, adapters = build(method)
    row = train_step(model, adapters, [optimizer_for(method, model, adapters)])
    rows[method] = dict(label=label + (f" ({M}/{M})" if adapters else ""), active=M if adapters else None, **row)
    del model, adapters
    free()


def dynamic(method, k, placements_random, fixed):
    """A simulated dynamic run: one model, global and local optimizers kept across re-allocations, as in training.

    Every random placement is one step; the fixed placements (upper/lower layers) follow, so their optimizer
    state is the steady state reached by then. Returns {row key: row}.
    """
    name = "DynaLoRA" if method == "lora" else "DynaVeRA"
    model, adapters = build(method)
    names = list(adapters)
    importance.set_tracking(adapters, "forward")  # what DynaLoRA /F trains with; it saves nothing for backward
    opts = [optimizer_for(method, model, adapters, "global"), optimizer_for(method, model, adapters, "local")]
    gen = torch.Generator().manual_seed(args.seed + 1000 * k + (method == "vera"))
    draws, ever = [], set()
    for i in range(placements_random):
        active = [names[j] for j in allocate.uniform(torch.ones(M), k, gen)]
        allocate.apply(adapters, active)
        ever |= set(active)
        progress(f"{name} {k}/{M} random placement {i + 1}/{placements_random}")
        r = train_step(model, adapters, opts)
        draws.append(dict(r, placement=placement(names, active), lowest_active_layer=lowest_active_layer(names, active),
                          all_modules_seen=len(ever) == M))
    out = {}
    if draws:
        steady = [d for d in draws if d["all_modules_seen"]] or draws[-1:]
        saved = [d["saved"] for d in draws]
        at_min = min(draws, key=lambda d: d["saved"])
        mean = {key: statistics.mean(d[key] for d in draws)
                for key in ("saved", "frozen", "trainable", "adapter_other", "grads")}
        mean["optim"], mean["optim_local"] = steady[0]["optim"], steady[0]["optim_local"]
        mean["overhead"] = mean["saved"] + mean["trainable"] + mean["adapter_other"] + mean["grads"] + mean["optim"]
        mean["total"] = mean["overhead"] + mean["frozen"]
        out[f"{method.replace('lora', 'dynalora').replace('vera', 'dynavera')}{k}_random"] = dict(
            label=f"{name} {k}/{M}, random (mean of {len(draws)})", active=k, **mean,
            saved_min=min(saved), saved_max=max(saved), placement_at_min=at_min["placement"],
            lowest_active_layer_at_min=at_min["lowest_active_layer"],
            optim_first=draws[0]["optim"], optim_local_first=draws[0]["optim_local"],
            steady_from_draw=draws.index(steady[0]) + 1 if steady[0]["all_modules_seen"] else None, draws=draws)
    for where in fixed:
        active = names[-k:] if where == "upper" else names[:k]  # adapters are ordered by layer, then query, value
        allocate.apply(adapters, active)
        progress(f"{name} {k}/{M} {where} layers")
        r = train_step(model, adapters, opts)
        out[f"{method.replace('lora', 'dynalora').replace('vera', 'dynavera')}{k}_{where}"] = dict(
            label=f"{name} {k}/{M}, {where} layers", active=k, **r, placement=placement(names, active))
    return out


progress("cost model: one forward per depth (memory.depth_costs)")
model, adapters = build("lora")
costs = memory.depth_costs(model, adapters, batch, lora.head_parameters(model))  # index d: the top d layers active
del model, adapters
free()


def depth_aware(k):
    """Depth-aware DynaLoRA k/M: the real allocator (discounted, forward importance, re-allocating after every
    step) chooses among the modules of the top D layers, D the smallest depth that holds k of them. One step per
    allocation on a fresh model, so the AdamW state is that of the eligible modules only, as in training; one
    allocation when k is all of them (every allocation is the same), else --draws."""
    model, adapters = build("lora")
    names = list(adapters)
    depth = allocate.min_depth(names, k)
    eligible = allocate.top_layers(names, depth)
    importance.set_tracking(adapters, "forward")
    alloc = allocate.Allocation(names, "discounted", k, measure="forward", period=1, seed=args.seed, eligible=eligible)
    alloc.initial(adapters, None)
    opts = [optimizer_for("lora", model, adapters, "global"), optimizer_for("lora", model, adapters, "local")]
    draws = []
    for i in range(1 if k == len(eligible) else args.draws):
        progress(f"DynaLoRA {k}/{M} depth-aware (top {depth} layers) allocation {i + 1}")
        r = train_step(model, adapters, opts)
        d = allocate.depth(alloc.active, names)
        draws.append(dict(r, placement=placement(names, alloc.active), depth=d, predicted=costs[d],
                          measured_total=r["saved"] + r["grads"] + r["optim"]))
        alloc.step(i + 1, adapters)
    mean = {key: statistics.mean(x[key] for x in draws) for key in ("saved", "frozen", "trainable", "adapter_other", "grads")}
    mean["optim"], mean["optim_local"] = draws[-1]["optim"], draws[-1]["optim_local"]  # state only grows
    mean["overhead"] = mean["saved"] + mean["trainable"] + mean["adapter_other"] + mean["grads"] + mean["optim"]
    mean["total"] = mean["overhead"] + mean["frozen"]
    return dict(label=f"DynaLoRA {k}/{M}, depth-aware: top {depth} layers"
                      + (f" (mean of {len(draws)})" if len(draws) > 1 else ""), active=k, **mean, max_depth=depth,
                eligible=len(eligible), saved_min=min(x["saved"] for x in draws),
                saved_max=max(x["saved"] for x in draws), predicted=costs[depth], draws=draws)


for k in budgets:
    if k < M:
        rows.update(dynamic("lora", k, args.draws, ("upper", "lower")))
        free()
        rows[f"dynalora{k}_depth"] = depth_aware(k)
        free()
if budgets[0] < M:
    rows.update(dynamic("vera", budgets[0], args.draws, ()))
    free()

# order rows as in the brief: static ones, then DynaLoRA by budget, then VeRA, DynaVeRA
order = ["frozen_forward", "full", "bitfit", "lora"] + [k for k in rows if k.startswith("dynalora")] + \
        ["vera"] + [k for k in rows if k.startswith("dynavera")]
rows = {k: rows[k] for k in order}
ref = rows["lora"]
for r in rows.values():
    r["saved_ratio"] = r["saved"] / ref["saved"]
    r["overhead_ratio"] = r["overhead"] / ref["overhead"]

# ----------------------------------------------------------------------------- report
wall = time.time() - t_start
threads = torch.get_num_threads()
import transformers  # noqa: E402

print(f"# bench/memory.py: training memory of one step, exact byte accounting")
print(f"{datetime.date.today().isoformat()}; RoBERTa-base architecture (RobertaConfig() defaults, random weights), "
      f"{args.layers} layers, num_labels=2, batch {args.batch_size} x seq {args.seq_len} random tokens, fp32, "
      f"targets query,value (M={M} modules), LoRA r={args.lora_r} alpha={args.lora_r}, VeRA r={args.vera_r}, "
      f"adapter dropout {args.dropout}, "
      f"AdamW, {args.draws} seeded random placements per dynamic budget, seed {args.seed}"
      f"{'; --quick (fewer layers, smaller batch and sequence, fewer draws than the defaults)' if args.quick else ''}")
print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, threads {threads}, "
      f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
      f"attention {attn} (train mode, model dropout 0.1), python {platform.python_version()}; wall time {wall:.0f} s; "
      f"1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end (this run alone makes about "
      f"{threads}; more = shared CPUs)")
print()
cols = ["saved for backward", "frozen weights", "trainable params", "other adapter state", "grads", "AdamW state",
        "training overhead", "total"] + (["cuda max allocated"] if cuda else []) + ["saved / LoRA", "overhead / LoRA"]
keys = ["saved", "frozen", "trainable", "adapter_other", "grads", "optim", "overhead", "total"] + \
       (["cuda_max_allocated"] if cuda else [])
print("| configuration | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
for r in rows.values():
    cells = [f"{r[k] / MiB:.1f}" for k in keys]
    if "saved_min" in r:
        cells[0] += f" ({r['saved_min'] / MiB:.1f}-{r['saved_max'] / MiB:.1f})"
    print(f"| {r['label']} | " + " | ".join(cells) + f" | {r['saved_ratio']:.3f} | {r['overhead_ratio']:.3f} |")
print()
print("MiB = 2^20 bytes. Random rows: mean over placements, saved-for-backward as mean (min-max).")
print()
dyn = [r for r in rows.values() if ("placement" in r or "placement_at_min" in r) and "max_depth" not in r]
if dyn:
    print("| placement | lowest active layer | active modules per layer (0 ... top) | saved for backward "
          "| saved / LoRA |")
    print("|---|---:|---|---:|---:|")
    for r in dyn:
        if "placement_at_min" in r:
            print(f"| {r['label'].split(',')[0]}, random: smallest of {len(r['draws'])} | "
                  f"{r['lowest_active_layer_at_min']} | "
                  f"`{r['placement_at_min']}` | {r['saved_min'] / MiB:.1f} | {r['saved_min'] / ref['saved']:.3f} |")
        else:
            lowest = min(i for i, s in enumerate(r["placement"].split()) if s != "..")
            print(f"| {r['label']} | {lowest} | `{r['placement']}` | {r['saved'] / MiB:.1f} | {r['saved_ratio']:.3f} |")
    print()
    print("Placement code: one pair per layer from layer 0 up, q/v = query/value adapter active, . = inactive.")
    print()

depth_rows = [r for r in rows.values() if "max_depth" in r]
print("Cost model check: memory.depth_costs, measured once on the LoRA model (one forward per depth d, every module of "
      "the top d layers active; gradients and AdamW state from the parameters' sizes), against each allocation's "
      "measured step. It predicts the cost at an allocation's depth: exact when every module from its lowest one up "
      "is active, an upper bound otherwise.")
print()
print("| configuration | placement (layer 0 ... top) | depth | predicted saved | measured saved | predicted saved + "
      "grads + AdamW | measured saved + grads + AdamW | measured / predicted |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
lora_measured = ref["saved"] + ref["grads"] + ref["optim"]
check = [(ref["label"], " ".join(["qv"] * args.layers),
          dict(depth=args.layers, predicted=costs[-1], saved=ref["saved"], measured_total=lora_measured))]
check += [(f"DynaLoRA {r['active']}/{M}, depth-aware, allocation {i + 1}", x["placement"], x)
          for r in depth_rows for i, x in enumerate(r["draws"])]
for label, where, x in check:
    print(f"| {label} | `{where}` | {x['depth']} | {x['predicted']['saved'] / MiB:.3f} | {x['saved'] / MiB:.3f} | "
          f"{x['predicted']['total'] / MiB:.3f} | {x['measured_total'] / MiB:.3f} | "
          f"{x['measured_total'] / x['predicted']['total']:.4f} |")
print()
print("| target | measured (worst allocation) | limit | verdict |")
print("|---|---:|---:|---|")
for r in depth_rows:
    if r["active"] == max(1, min(M, round(16 * M / 24))):  # the target is set for 16 of 24 modules
        worst = r["saved_max"] / ref["saved"]
        print(f"| depth-aware DynaLoRA {r['active']}/{M}, saved for backward / LoRA {M}/{M}'s | {worst:.3f} | <= 0.67 | "
              f"{'MET' if worst <= 0.67 else 'MISSED'} |")
        r["target"] = dict(name="saved / LoRA", value=worst, limit=0.67, met=worst <= 0.67)
print()
print("What the numbers mean:")
print(f"- saved for backward: what the forward leaves for backward (activations, dropout masks, attention "
      f"probabilities), each storage once; backward frees it. For LoRA {M}/{M} it is "
      f"{100 * ref['saved'] / ref['overhead']:.0f}% of the training overhead.")
print("- An inactive adapter saves nothing (no dropout, no gradient), and with the base frozen nothing below the "
      "lowest active module needs a gradient: layers under it save nothing and backward stops there. A random "
      "placement almost always has an active module in layer 0, so it saves only the inputs of layers whose query "
      "and value adapters are both inactive; the upper-layers placement cuts whole layers.")
for k in budgets:
    key = f"dynalora{k}_random"
    if key in rows:
        r = rows[key]
        up, low = rows[f"dynalora{k}_upper"], rows[f"dynalora{k}_lower"]
        print(f"- DynaLoRA {k}/{M} vs LoRA {M}/{M}, saved for backward: random placement "
              f"{100 * (1 - r['saved_ratio']):.1f}% less (mean; {100 * (1 - r['saved_max'] / ref['saved']):.1f}% to "
              f"{100 * (1 - r['saved_min'] / ref['saved']):.1f}% over placements), upper layers "
              f"{100 * (1 - up['saved_ratio']):.1f}% less, lower layers {100 * (1 - low['saved_ratio']):.1f}% less. "
              f"Training overhead: {100 * (1 - r['overhead_ratio']):.1f}% / {100 * (1 - up['overhead_ratio']):.1f}% / "
              f"{100 * (1 - low['overhead_ratio']):.1f}% less.")
print("- Gradients: only active adapters and the head have a .grad, so they shrink with the budget.")
print("- AdamW state is shown in its steady state. A global AdamW (one optimizer over every adapter parameter, as "
      "train.py builds it) keeps exp_avg, exp_avg_sq and step of a module that was active earlier and is inactive "
      "now: it only skips the module while its grad is None. Once every module has been active, it holds as much "
      f"as LoRA {M}/{M}'s, so a dynamic budget saves nothing on optimizer state. The local optimizer (one AdamW "
      "per module, allocate.LocalAdamW) keeps its state the same way"
      + (" and holds exactly as many bytes" if all(r["optim"] == r["optim_local"] for k, r in rows.items()
                                                  if k.startswith("dyna")) else "")
      + "; both were stepped on the same gradients here:")
for key, r in rows.items():
    if key.endswith("_random"):
        sf = r["steady_from_draw"]
        print(f"  {r['label'].split(',')[0]}: {r['optim_first'] / MiB:.2f} MiB after the first placement (its "
              f"{r['active']} modules and the head), {r['optim'] / MiB:.2f} MiB steady "
              + (f"(from placement {sf} on, every module had been active)" if sf else
                 "(NOT reached: some module was never active in these placements; last value shown)")
              + f"; local optimizer {r['optim_local'] / MiB:.2f} MiB.")
print("- Not counted: transient buffers inside one op, the memory allocator's caching and fragmentation, and the "
      "frozen forward's own transient activations (nothing is saved under no_grad).")
if not cuda:
    print("- No GPU here, so no torch.cuda.max_memory_allocated columns. On a GPU the attention kernel differs "
          "(flash or memory-efficient SDPA save less than the CPU math path counted here).")
print()

if args.json:
    with open(args.json, "w") as f:
        json.dump({"config": {**vars(args), "modules": M, "budgets": budgets, "device": str(device), "cost_model": costs,
                              "torch": torch.__version__, "transformers": transformers.__version__, "threads": threads,
                              "date": datetime.date.today().isoformat(), "wall_time_s": wall,
                              "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
                              "params_total_bytes": params_total},
                   "rows": rows}, f, indent=1)
