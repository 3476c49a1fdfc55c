"""What train.py refuses, and what it survives. Every bad input gets one line `error: ...`, a non-zero exit and
nothing written: one row per case in BAD. A second run on the same dir, a kill, a damaged log or checkpoint and a
full disk lose nothing a run has written.

The BAD rows run train.py in this process (runpy, as tests/test_precision.py does): each fails before any training,
so a row costs milliseconds instead of a subprocess's seconds of imports. test_cli_* runs rows as a user does."""
import fcntl
import json
import os
import resource
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import ROOT, build_tiny_model, glue_dir, kill_after_first_checkpoint, run_train, sentence, tiny_model, write_glue  # noqa: F401 (fixtures)

FAST = ["--batch-size", 8, "--max-len", 24, "--log-every", 1, "--probe-batches", 2, "--eval-batch-size", 16]
BASE = ["--task", "rte", "--model", "@model", "--data-dir", "@glue", "--max-steps", 2, *FAST]


def _file(name, data=b""):
    def make(out):
        os.makedirs(out, exist_ok=True)
        (out / name).write_bytes(data() if callable(data) else data)
    return make


def _torch_bytes(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _locked(out):  # what a run that holds the dir does: an exclusive flock on out/.lock
    os.makedirs(out)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _read_only(out):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only dirs")
    os.makedirs(out)
    os.chmod(out, 0o500)


def _finished_no_checkpoint(out):
    _file("results.json", b"{}")(out)
    os.makedirs(out / "merged")


def _a_file(out):
    out.write_text("not a dir")


RANGE_CHECKED = [(f, v) for f, vs in {
    "--lr": ["nan", "inf", "-1e-3", 0], "--head-lr": ["nan", "-1"], "--warmup-ratio": [1, -0.1, "nan"],
    "--max-steps": [0], "--epochs": [0, "nan", "-1"], "--max-train-samples": [-1, 0], "--eval-every": [-1],
    "--save-every": [-1], "--max-grad-norm": ["nan", -1], "--weight-decay": [-0.1, "inf"], "--rank": [0, -4],
    "--alpha": [0, "nan"], "--dropout": [1, -0.1], "--d-initial": [0, "inf"], "--threshold": [0, 1.5, "nan"],
    "--active": [0], "--param-budget": [0], "--probe-batches": [-1], "--realloc-at": [0], "--max-eval-samples": [0],
    "--period": [0], "--period-epochs": [0, "inf"], "--batch-size": [0], "--grad-accum": [0],
    "--eval-batch-size": [0], "--log-every": [0], "--max-len": [0], "--seed": [-1], "--vera-seed": [-1],
    "--max-depth": [0], "--memory-budget": ["nan", 1.5]}.items() for v in vs]

# (flags added to BASE, a fragment of the one line, a function that prepares the output dir or None)
BAD = [([f"{flag}={v}"], f"{flag} must be ", None) for flag, v in RANGE_CHECKED] + [
    (["--device", "cuda:99"], "--device cuda:99", None),
    (["--device", "gpu"], "--device gpu is not a device name", None),
    (["--targets", "query,value,query"], "--targets names query more than once", None),
    (["--targets", "query,,value"], "empty entry", None),
    (["--targets", "all,query"], "--targets all already holds every target", None),
    (["--active", 2, "--threshold", 0.5], "three budgets", None),
    # the output dir: a run holds it, another run is writing it, or it cannot be a dir
    ([], "already holds a run (results.json)", _file("results.json", b"{}")),
    ([], "already holds a run (metrics.jsonl)", _file("metrics.jsonl", b'{"step": 1}\n')),
    ([], "already holds a run (checkpoint.prev.pt)", _file("checkpoint.prev.pt", b"x")),
    ([], "already holds a run (adapter)", lambda out: os.makedirs(out / "adapter")),
    (["--resume"], "no checkpoint.pt to continue from", _finished_no_checkpoint),
    ([], "another run is writing to", _locked),
    (["--resume"], "another run is writing to", _locked),
    ([], "is a file, not a directory", _a_file),
    ([], "Permission denied", _read_only),
    # a checkpoint that cannot be resumed, and none before it to fall back to
    (["--resume"], "checkpoint.pt is empty and", _file("checkpoint.pt")),
    (["--resume"], "checkpoint.pt is unreadable", _file("checkpoint.pt", lambda: _torch_bytes({"step": 1})[:200])),
    (["--resume"], "checkpoint.pt is not a train.py checkpoint", _file("checkpoint.pt", lambda: _torch_bytes(
        {"weight": torch.zeros(3)}))),
    # the model and the data (loaded: these fail after the model is read, still before anything is written)
    (["--max-len", 79], "--max-len 79 is more than the 78 positions", None),  # RoBERTa: 80 positions, 2 offset
    (["--max-len", 5], "--max-len 5 is too short: a sentence pair needs 6 tokens", None),
    (["--task", "cola", "--max-len", 2], "a sentence needs 3 tokens", None),
    (["--model", "@notok"], "has no tokenizer files", None),
    (["--model", "@truncated"], "could not load model", None),
    (["--data-dir", "@nonutf8"], "train.tsv:3: not UTF-8 text", None),
    (["--task", "stsb", "--data-dir", "@badscore"], "dev.tsv:2: bad label: score '7.5' outside [0, 5]", None),
]


@pytest.fixture(scope="module")
def paths(tiny_model, glue_dir, tmp_path_factory):
    """@names in the flags: the tiny model and data, and broken copies of them."""
    root = tmp_path_factory.mktemp("broken")
    notok, truncated = root / "notok", root / "truncated"
    shutil.copytree(tiny_model, truncated)
    os.makedirs(notok)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_model) / name, notok)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    nonutf8, badscore = Path(write_glue(root / "nonutf8")), Path(write_glue(root / "badscore"))
    train = (nonutf8 / "RTE" / "train.tsv").read_bytes().split(b"\n")
    train[2] = train[2][:4] + b"\xef" + train[2][4:]
    (nonutf8 / "RTE" / "train.tsv").write_bytes(b"\n".join(train))
    dev = (badscore / "STS-B" / "dev.tsv").read_text().split("\n")
    dev[1] = dev[1].rsplit("\t", 1)[0] + "\t7.5"
    (badscore / "STS-B" / "dev.tsv").write_text("\n".join(dev))
    return {"@model": tiny_model, "@glue": glue_dir, "@notok": str(notok), "@truncated": str(truncated),
            "@nonutf8": str(nonutf8), "@badscore": str(badscore)}


def snapshot(path):
    """Every file and dir under `path` with its size, mtime and mode (None when `path` does not exist)."""
    path = Path(path)
    if not path.exists():
        return None
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in entries}


def train_inline(argv, monkeypatch, capfd):
    """(exit code, stderr) of train.py run in this process, as `python train.py --no-progress ARGV`."""
    monkeypatch.setattr(sys, "argv", ["train.py", "--no-progress", *map(str, argv)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    return e.value.code, capfd.readouterr().err


def one_line(code, err, message):
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("error: "), (code, err[-2000:])
    assert message in lines[0] and "Traceback" not in err, lines[0]
    return lines[0]


@pytest.mark.parametrize("flags,message,prepare", BAD, ids=[" ".join(map(str, f)) or m for f, m, _ in BAD])
def test_bad_input_one_line_nothing_written(tmp_path, paths, monkeypatch, capfd, flags, message, prepare):
    out = tmp_path / "run"
    held = prepare(out) if prepare else None
    before = snapshot(out)
    try:
        code, err = train_inline([paths.get(str(a), a) for a in BASE + flags] + ["--output-dir", out],
                                 monkeypatch, capfd)
    finally:
        if isinstance(held, int):
            os.close(held)
        if prepare is _read_only:
            os.chmod(out, 0o700)
    one_line(code, err, message)
    assert code == 2
    assert snapshot(out) == before, "nothing may be written"


def test_cli_rows_give_one_line_on_stderr(tmp_path, paths):
    """Two rows as a user runs them: one refused right after parsing, one after the model is read."""
    for i, (flags, message) in enumerate([(["--lr", "nan"], "--lr must be > 0 and finite, got nan"),
                                          (["--model", paths["@truncated"]], "could not load model")]):
        out = tmp_path / str(i)
        proc = run_train(*[paths.get(str(a), a) for a in BASE], *flags, "--output-dir", out, check=False)
        one_line(proc.returncode, proc.stderr, message)
        assert proc.returncode == 2 and not out.exists()


# ----------------------------------------------------------------------------- resume
COMMON = ["--task", "rte", "--active", 2, "--rank", 2, "--period", 3, "--optimizer", "local", "--dropout", 0.1,
          "--max-steps", 12, "--save-every", 1, "--eval-every", 4, *FAST]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def finished(tiny_model, glue_dir, tmp_path_factory):
    """One finished run (a checkpoint at every step): the reference the resume tests compare with."""
    out = tmp_path_factory.mktemp("finished") / "ref"
    run_train(*COMMON, "--model", tiny_model, "--data-dir", glue_dir, "--output-dir", out)
    return out


def test_refused_resume_writes_nothing(tmp_path, finished, paths, tiny_model, glue_dir, monkeypatch, capfd):
    """A --resume with another setting, or another model under the same settings, changes nothing in the dir
    (args.json included: bench/glue_table.py trusts it)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    other = build_tiny_model(tmp_path / "other", ["the cat sat on the mat"] * 20, dropout=0.0)  # other weights
    before = snapshot(out)
    for flags, message in ((["--lr", 1e-3], "different settings than the checkpoint: {'lr'"),
                           (["--model", other], "'model': 'differs'")):
        code, err = train_inline([*COMMON, "--model", tiny_model, "--data-dir", glue_dir, "--output-dir", out,
                                  "--resume", *flags], monkeypatch, capfd)
        one_line(code, err, message)
        assert snapshot(out) == before


def test_resume_a_moved_run_with_paths_spelled_otherwise(tmp_path, finished, tiny_model, glue_dir):
    """The output dir, the data dir and the model dir are where files are, not settings of the run: a run moved
    elsewhere resumes with all three spelled differently (relative, with ./). Its log is missing: the checkpoint is
    the truth, said in one line. Peak memory is the max over the run's processes, kept in the checkpoint."""
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved)
    data = shutil.copytree(glue_dir, tmp_path / "data")
    ckpt = torch.load(moved / "checkpoint.pt", weights_only=True)
    kind = json.loads((finished / "results.json").read_text())["peak_memory_kind"]
    ckpt["peak_memory"] = (123456.0, kind)  # as if an earlier process of the run had needed that much
    torch.save(ckpt, moved / "checkpoint.pt")
    os.remove(moved / "metrics.jsonl")
    rel = lambda p: os.path.join(".", os.path.relpath(p), ".")  # noqa: E731
    proc = run_train(*COMMON, "--model", rel(tiny_model), "--data-dir", rel(data), "--output-dir", rel(moved),
                     "--resume")
    assert "resumed from" in proc.stdout and "at step 12" in proc.stdout
    assert proc.stderr.strip().splitlines() == [f"warning: {rel(moved)}/metrics.jsonl was missing; the log restarts "
                                                f"at step 12, rows before it are lost"]
    res = json.loads((moved / "results.json").read_text())
    assert res["peak_memory_mb"] == 123456.0 and res["final"] == json.loads((finished / "results.json").read_text())["final"]


def test_damaged_checkpoint_and_log_resume_bitwise(tmp_path, finished, tiny_model, glue_dir):
    """Killed after its second checkpoint; then the latest checkpoint is cut short and the log gets a blank line and
    a half-written last line (what a full disk leaves). The resume falls back to checkpoint.prev.pt, repairs the log,
    says both in one line each, and ends bitwise where the uninterrupted run ended, with the same log."""
    out = tmp_path / "killed"
    flags = [*COMMON, "--model", tiny_model, "--data-dir", glue_dir, "--output-dir", out]
    step = kill_after_first_checkpoint([sys.executable, ROOT / "train.py", "--no-progress", *flags], out,
                                       wait_for="checkpoint.prev.pt")
    assert 1 <= step < 12
    ckpt = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(ckpt[:len(ckpt) // 3])
    prev_step = torch.load(out / "checkpoint.prev.pt", weights_only=True)["step"]
    lines = (out / "metrics.jsonl").read_text().splitlines(True)
    (out / "metrics.jsonl").write_text("".join(lines[:2]) + "\n" + "".join(lines[2:]) + '{"step": 99, "train_lo')
    proc = run_train(*flags, "--resume")
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and f"resuming from the one before it, {out}/checkpoint.prev.pt (step {prev_step})" \
        in warnings[0] and "is unreadable" in warnings[0], warnings
    assert "dropped 2 blank or unreadable line(s)" in warnings[1] and "the checkpoint at step" in warnings[1]
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (finished, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(out / "metrics.jsonl") == read_jsonl(finished / "metrics.jsonl")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):  # the damaged one was overwritten, the good one kept
        assert torch.load(out / name, weights_only=True)["step"] in (11, 12)
    assert not list(out.glob("*.tmp"))


# ----------------------------------------------------------------------------- a second run, a full disk
@pytest.fixture(scope="module")
def long_glue(tmp_path_factory):
    """The tiny data plus one dev pair of 400 words: at --max-len 78, the most the tiny RoBERTa's 80 positions
    hold, it must be cut, never crash the final eval."""
    root = Path(write_glue(tmp_path_factory.mktemp("long")))
    with open(root / "RTE" / "dev.tsv", "a") as f:
        f.write(f"99\t{' '.join(['the big red cat'] * 100)}\t{sentence(__import__('random').Random(1))}\tentailment\n")
    return str(root)


def test_two_runs_on_one_dir(tmp_path, tiny_model, long_glue):
    """Started together on one dir: one refuses in one line, the other finishes with a clean log."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--no-progress", "--task", "rte", "--model", tiny_model,
           "--data-dir", long_glue, "--max-steps", 20, "--save-every", 2, "--eval-every", 10, *map(str, FAST),
           "--max-len", "78", "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.communicate(timeout=300)[1], p.returncode)[::-1] for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    line = one_line(2, err, "")
    assert "another run is writing to" in line or "already holds a run" in line, line
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 21))
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20]
    assert json.loads((out / "results.json").read_text())["steps"] == 20
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


def test_full_disk_gives_one_line_and_no_tmp(tmp_path, tiny_model, glue_dir):
    """A file size limit makes the checkpoint write fail as a full disk does: one line naming the path and the
    cause, exit 1, no .tmp left. What was written before stays."""
    out = tmp_path / "run"

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, ROOT / "train.py", "--no-progress", "--task", "rte", "--model", tiny_model, "--data-dir",
           glue_dir, "--method", "full", "--max-steps", 4, "--save-every", 2, *FAST, "--output-dir", out]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, preexec_fn=small_disk,
                          timeout=300)
    line = one_line(proc.returncode, proc.stderr, f"could not write {out}/checkpoint.pt: File too large")
    assert proc.returncode == 1, line
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.pt").exists()
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "train_loss" in r] == [1, 2]


def test_divergence_before_any_checkpoint_claims_none(tmp_path, tiny_model, glue_dir):
    out = tmp_path / "run"
    proc = run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--method", "full", "--lr", 1e30,
                     "--warmup-ratio", 0, "--max-grad-norm", 0, "--max-steps", 20, "--save-every", 0,
                     "--output-dir", out, *FAST, check=False)
    line = one_line(proc.returncode, proc.stderr, "non-finite")
    assert proc.returncode == 3 and "No checkpoint was written" in line and "is kept" not in line, line
    assert not (out / "checkpoint.pt").exists()
