"""Data parallel over the processes torchrun starts, with torch.distributed and no wrapper (as nanoGPT's train.py).

  torchrun --nproc-per-node P train.py ...   # P processes; gloo on CPU, nccl with one GPU per process

What train.py does with these helpers, and why:
- `setup` joins the process group that torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) describes; without
  torchrun it returns rank 0 of 1 and every helper here does nothing.
- Every rank builds the same model from the same seed and holds the same adapters, head, optimizer and allocation;
  `broadcast` makes the trained tensors rank 0's at the start anyway. Each rank reads its own shard of each global
  batch, and each micro-batch's loss carries its share of the global batch's examples, so that the gradients summed
  over ranks (`all_reduce_grads`) are those of the global batch: an average over ranks when the shards are equal.
- Gradients are summed by us, not by DistributedDataParallel. DDP buckets the parameters that require grad when it
  is built; DynaLoRA changes that set at every re-allocation, so DDP would have to be rebuilt each time (which also
  broadcasts every parameter and buffer of the model again). Instead, after the last backward of a step, the active
  adapters' and the head's gradients are summed in one flattened all_reduce. bench/speed.py --ddp measures both.
- The importance accumulators and the train loss are rank-local sums. `summed` folds them: inside it every rank holds
  the sums over ranks (every rank then draws the same allocation from the same generator), after it rank 0 keeps
  them and the others hold zeros. train.py folds before each allocation, each log line and each checkpoint, so the
  checkpoint rank 0 writes holds the global sums and a resumed run starts from them.
- Only rank 0 writes (logs, checkpoints, exports); every rank's random state goes into the checkpoint
  (`gather_object`), so `--resume` under torchrun continues each rank's dropout stream.
"""
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def setup(device="auto"):
    """(rank, world_size, device). Under torchrun: joins the process group (nccl on CUDA, one GPU per local rank;
    gloo on CPU). Otherwise (0, 1, the device --device names; auto: cuda when available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device)
    if torch.device(device).type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def cleanup():
    if dist.is_initialized():
        dist.barrier()  # every rank is done with every collective before any tears its connections down
        dist.destroy_process_group()


def _sum_in_place(tensors):
    """all_reduce(SUM) of `tensors`, in place: one flattened call per (dtype, device)."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat)
        for t, v in zip(ts, flat.split([t.numel() for t in ts])):
            t.copy_(v.view_as(t))


@torch.no_grad()
def all_reduce_grads(params):
    """Sum the gradients of `params` (the same list, in the same order, on every rank) over the ranks. A parameter
    this rank's micro-batches did not reach (an empty shard of a small last batch) adds zeros."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _sum_in_place([p.grad for p in params])


@contextmanager
def summed(tensors):
    """Inside: each tensor holds its sum over the ranks, on every rank. After: rank 0 keeps the sums and the other
    ranks hold zeros, so the sum over ranks is unchanged and the next fold counts nothing twice."""
    if world_size() == 1 or not tensors:
        yield
        return
    with torch.no_grad():
        _sum_in_place(tensors)
    yield
    if dist.get_rank() != 0:
        with torch.no_grad():
            for t in tensors:
                t.zero_()


@torch.no_grad()
def broadcast(tensors, src=0):
    """Every rank's `tensors` become rank `src`'s."""
    if world_size() > 1:
        for t in tensors:
            dist.broadcast(t, src)


def gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] with one process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(idx, grad_accum):
    """This rank's micro-batches of a global batch (a list of example indices): the batch is cut into grad_accum x
    world_size near-equal runs and rank r takes runs r * grad_accum ... (r + 1) * grad_accum - 1 (empty ones dropped)."""
    n, rank = grad_accum * world_size(), dist.get_rank() if dist.is_initialized() else 0
    parts = [idx[j * len(idx) // n:(j + 1) * len(idx) // n] for j in range(rank * grad_accum, (rank + 1) * grad_accum)]
    return [part for part in parts if part]


def rng_states(device):
    """{"rng_cpu": state, ["rng_cuda": state]} of this process; with several ranks, each value is the list of every
    rank's state (a collective: every rank calls it)."""
    states = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng_cuda"] = torch.cuda.get_rng_state(device)
    return states if world_size() == 1 else {k: gather_object(v) for k, v in states.items()}


def set_rng_states(states, device):
    """Restore what rng_states saved (this rank's entry when it holds one per rank)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    own = {k: v if torch.is_tensor(v) else v[rank] for k, v in states.items()}
    torch.set_rng_state(own["rng_cpu"].cpu())
    if device.type == "cuda" and "rng_cuda" in own:
        torch.cuda.set_rng_state(own["rng_cuda"].cpu(), device)
