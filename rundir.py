"""The output directory of a run: who may write it, what it already holds, and writing it so that a kill, a full
disk or a second run never loses what is there.

  rundir.check_free(out, resume)    # refuse a dir another run is writing, or one that holds a run (no --resume)
  fd = rundir.claim(out, resume)    # mkdir, then hold out/.lock (fcntl.flock) until this process ends
  rundir.write_json(path, obj)      # atomic (a .tmp beside it and a rename); RunDirError names the path and cause
  rundir.save_checkpoint(ckpt, out, rotate)   # checkpoint.pt, the one before kept as checkpoint.prev.pt
  ckpt, path, note = rundir.load_checkpoint(out)   # the newest readable of the two
  note = rundir.repair_metrics(path, step)    # metrics.jsonl cut back to the checkpoint's step

The lock is an OS lock on a file, not a pid file: the kernel drops it when the process ends, SIGKILL included,
so a killed run never blocks its own --resume. Under torchrun only rank 0 calls claim (only rank 0 writes).
The checkpoint is the truth on resume: metrics.jsonl is cut back to its step, and lines a kill or a full disk
left unreadable are dropped.
"""
import fcntl
import json
import os
import resource
import shutil
import subprocess

import torch

LOCK = ".lock"
CKPT, PREV = "checkpoint.pt", "checkpoint.prev.pt"
OUTPUTS = ("results.json", "metrics.jsonl", "adapter", "merged", CKPT, PREV)  # any of them: the dir holds a run
FINISHED = ("results.json", "adapter", "merged")
CKPT_KEYS = {"model", "optimizer", "step", "args", "best", "wall_time_s", "loss_sum", "n_loss"}


class RunDirError(Exception):
    """The output dir cannot be used or written; the message is one line meant for the user. `code`: the exit
    status, 2 for a dir that is refused, 1 for a write the system refused (a full disk, a read-only dir)."""

    def __init__(self, msg, code=2):
        super().__init__(msg)
        self.code = code


def cause(e):
    """The one-line reason of a failed write: 'No space left on device', 'Permission denied', ..."""
    inner = e
    while inner is not None:  # torch.save reports a failed write as a RuntimeError raised while handling it
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        inner = inner.__cause__ or inner.__context__
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def remove_tmp(out):
    """Remove what a failed write left in `out` (we hold its lock: every .tmp there is ours)."""
    for name in os.listdir(out):
        if name.endswith(".tmp") or name.startswith(".tmp-"):
            path = os.path.join(out, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def locked(out):
    """True when another process holds out/.lock. Creates nothing."""
    try:
        fd = os.open(os.path.join(out, LOCK), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared: only a writer's exclusive lock conflicts
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock


def _check_holds(out, resume):
    found = [n for n in OUTPUTS if os.path.exists(os.path.join(out, n))]
    if found and not resume:
        raise RunDirError(f"{out} already holds a run ({', '.join(found)}); pass --resume to continue it or pick "
                          f"another --output-dir")
    if resume and not {CKPT, PREV} & set(found) and set(FINISHED) & set(found):
        raise RunDirError(f"{out} holds a finished run ({', '.join(found)}) but no {CKPT} to continue from; "
                          f"pick another --output-dir")


def _busy(out):
    return RunDirError(f"another run is writing to {out} (it holds {os.path.join(out, LOCK)}); wait for it to end "
                       f"or pick another --output-dir")


def check_free(out, resume):
    """RunDirError unless `out` may be written: no other run holds it, and it holds no run unless --resume
    continues one (and a --resume refuses a finished run whose checkpoints are gone). Writes nothing."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirError(f"--output-dir {out} is a file, not a directory")
    if locked(out):
        raise _busy(out)
    _check_holds(out, resume)


def claim(out, resume):
    """Create `out` and hold its lock for the rest of this process (the returned fd), then check again under the
    lock: a run that started beside this one and got there first is seen now."""
    path = os.path.join(out, LOCK)
    try:
        os.makedirs(out, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirError(f"cannot write to {out}: {cause(e)}", code=1) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(out) from None
    _check_holds(out, resume)
    return fd


def _atomic(path, write):
    """write(tmp) then rename tmp over `path`; on any failure no .tmp is left and RunDirError names path and cause."""
    tmp = path + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise RunDirError(f"could not write {path}: {cause(e)}", code=1) from None


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, write)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2))


def append_jsonl(path, obj):
    """One line at the end of `path`. A full disk may leave it cut short; repair_metrics drops it on resume."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(obj) + "\n")
    except OSError as e:
        raise RunDirError(f"could not write {path}: {cause(e)}", code=1) from None


def save_checkpoint(ckpt, out, rotate=True):
    """out/checkpoint.pt, atomically; with `rotate` the one it replaces becomes checkpoint.prev.pt (rotate=False
    after a resume from checkpoint.prev.pt: the damaged checkpoint.pt is overwritten, the good one is kept)."""
    path = os.path.join(out, CKPT)

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash leaves the old file or the new one
        if rotate and os.path.exists(path):  # a second name for the current one, so checkpoint.pt never goes missing
            prev = os.path.join(out, PREV)
            try:
                if os.path.exists(prev + ".tmp"):
                    os.remove(prev + ".tmp")
                os.link(path, prev + ".tmp")
                os.replace(prev + ".tmp", prev)
            except OSError:  # no hard links on this file system: for a moment there is only the one before
                os.replace(path, prev)
    _atomic(path, write)


def _read_checkpoint(path):
    """(checkpoint, None), or (None, why it cannot be used)."""
    if not os.path.exists(path):
        return None, "missing"
    if os.path.getsize(path) == 0:
        return None, "empty"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # our own file: tensors and plain data only
    except Exception as e:  # truncated zip, not a torch file, a pickle that needs code: all just unreadable
        return None, f"unreadable ({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})"
    if not isinstance(ckpt, dict) or not CKPT_KEYS <= set(ckpt):
        return None, "not a train.py checkpoint (no step, model and optimizer state)"
    return ckpt, None


def has_checkpoint(out):
    return any(os.path.exists(os.path.join(out, n)) for n in (CKPT, PREV))


def load_checkpoint(out):
    """(checkpoint on the CPU, its path, a one-line note or None): checkpoint.pt, or checkpoint.prev.pt when the
    latest one cannot be read. RunDirError when neither can. load_state_dict moves the tensors where they belong."""
    latest, prev = os.path.join(out, CKPT), os.path.join(out, PREV)
    ckpt, why = _read_checkpoint(latest)
    if ckpt is not None:
        return ckpt, latest, None
    older, why_prev = _read_checkpoint(prev)
    if older is None:
        raise RunDirError(f"cannot resume: {latest} is {why} and {prev} is {why_prev}; pick another --output-dir")
    return older, prev, f"{latest} is {why}; resuming from the one before it, {prev} (step {older['step']})"


def repair_metrics(path, step):
    """Cut metrics.jsonl back to the rows of steps <= `step` (the checkpoint's; None: a fresh start, no rows).
    Blank and unreadable lines (a kill or a full disk cuts the last one short) are dropped. Returns a one-line
    note when the file was missing or damaged, else None."""
    if step is None:
        if os.path.exists(path):
            os.remove(path)
        return None
    if not os.path.exists(path):
        write_text(path, "")
        return f"{path} was missing; the log restarts at step {step}, rows before it are lost"
    kept, bad = [], []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                row = json.loads(raw)
            except ValueError:  # also a non-UTF-8 byte
                row = None
            if not isinstance(row, dict):
                bad.append(i)
                continue
            if row.get("step", 0) <= step:
                kept.append(json.dumps(row) + "\n")
    write_text(path, "".join(kept))
    if bad:
        return (f"{path}: dropped {len(bad)} blank or unreadable line(s) (line {', '.join(map(str, bad[:3]))}"
                f"{', ...' if len(bad) > 3 else ''}); the checkpoint at step {step} is the truth")
    return None


def peak_memory(device, before=None):
    """(MB, kind) of this process's peak: CUDA memory allocated, or the CPU's max resident set. `before`: what a
    resumed run's checkpoint holds, so that the result is the max over the run's processes (when of one kind)."""
    if device.type == "cuda":
        mb, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_allocated"
    else:
        mb, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"  # Linux reports KiB
    if before is not None and before[1] == kind:
        mb = max(mb, before[0])
    return round(mb, 1), kind


def machine():
    """Where a run ran: float results can differ from one CPU (and its kernels) or library version to another."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import transformers
    return {"cpu": cpu, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def git_commit():
    """HEAD of the code's repository, '-dirty' when tracked files changed; None outside git."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except OSError:
        return None
