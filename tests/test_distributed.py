"""Splitting the batch: --grad-accum micro-batches and torchrun data parallel (2 gloo processes on this CPU) train
as one big batch, choose the same allocations, and resume after SIGKILL. The tiny model has no dropout here: a split
batch draws other dropout masks, which no split can reproduce."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tiny import ROOT, glue_dir, kill_after_first_checkpoint, run_train, tiny_model_nodrop  # noqa: F401 (fixtures)

FAST = ["--max-len", 24, "--log-every", 1, "--probe-batches", 2, "--eval-batch-size", 16, "--rank", 2, "--lr", 1e-2,
        "--active", 2, "--period", 2]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def adapters_of(out):
    return load_file(out / "adapter" / "adapter_model.safetensors")


def assert_same_training(a, b, tol):
    """Same adapters (within tol), the same allocation history and the same logged steps."""
    wa, wb = adapters_of(a), adapters_of(b)
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= tol
    assert any(k.endswith("lora_B.weight") and wa[k].abs().sum() > 0 for k in wa)  # it trained
    allocs = [[(m["step"], m["active"]) for m in read_jsonl(out / "metrics.jsonl") if "active" in m] for out in (a, b)]
    assert allocs[0] == allocs[1] and len(allocs[0]) >= 3  # the first allocation and at least two re-allocations
    losses = [[m["train_loss"] for m in read_jsonl(out / "metrics.jsonl") if "train_loss" in m] for out in (a, b)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.parametrize("optimizer,measure", [("global", "forward"), ("local", "gradient")])
def test_grad_accum_4_at_batch_4_matches_batch_16(tmp_path, tiny_model_nodrop, glue_dir, optimizer, measure):
    common = ["--task", "rte", "--model", tiny_model_nodrop, "--data-dir", glue_dir, "--max-steps", 6,
              "--eval-every", 6, "--optimizer", optimizer, "--importance", measure, *FAST]
    run_train(*common, "--batch-size", 16, "--output-dir", tmp_path / "big")
    run_train(*common, "--batch-size", 4, "--grad-accum", 4, "--output-dir", tmp_path / "accum")
    assert_same_training(tmp_path / "big", tmp_path / "accum", 1e-5)
    for out in ("big", "accum"):
        res = json.loads((tmp_path / out / "results.json").read_text())
        assert res["examples_per_step"] == 16 and res["updates"] == 6 and res["world_size"] == 1
    # n_updates counts optimizer steps: 2 active modules x 6 steps, however many micro-batches
    ckpt = torch.load(tmp_path / "accum" / "checkpoint.pt", weights_only=True)
    assert sum(int(v) for k, v in ckpt["model"].items() if k.endswith("n_updates")) == 2 * 6
    big = torch.load(tmp_path / "big" / "checkpoint.pt", weights_only=True)
    for k, v in ckpt["model"].items():  # the accumulators count every training token once
        if k.endswith("_count"):
            assert v == big["model"][k], k


ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def torchrun_cmd(*flags):
    """train.py under torchrun with 2 processes on this CPU (gloo), on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(ROOT / "train.py"), "--no-progress", "--device", "cpu", *map(str, flags)]


def torchrun(*flags):
    proc = subprocess.run(torchrun_cmd(*flags), capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    said = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("error:"))  # a rank's one line
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{said}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_torchrun_two_processes_match_one_and_resume_after_sigkill(tmp_path, tiny_model_nodrop, glue_dir):
    common = ["--task", "rte", "--model", tiny_model_nodrop, "--data-dir", glue_dir, "--max-steps", 12,
              "--eval-every", 6, "--save-every", 1, "--optimizer", "local", *FAST]
    run_train(*common, "--batch-size", 16, "--output-dir", tmp_path / "one")
    proc = torchrun(*common, "--batch-size", 8, "--output-dir", tmp_path / "two")
    assert proc.stdout.count("examples per optimizer step: 8 x 1 micro-batches x 2 processes = 16") == 1  # rank 0
    assert_same_training(tmp_path / "one", tmp_path / "two", 1e-5)
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res["world_size"] == 2 and res["examples_per_step"] == 16 and res["updates"] == 12
    ca, cb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("one", "two"))
    for k, v in ca["model"].items():  # rank 0 saved the scores summed over both ranks
        if k.endswith(("_count", "_score")):
            assert cb["model"][k].item() == pytest.approx(v.item(), rel=1e-5), k
    assert len(cb["rng_cpu"]) == 2 and cb["world_size"] == 2  # each rank's random state

    killed = tmp_path / "killed"
    assert 1 <= kill_after_first_checkpoint(torchrun_cmd(*common, "--batch-size", 8, "--output-dir", killed), killed,
                                            env=ENV) < 12
    torchrun(*common, "--batch-size", 8, "--output-dir", killed, "--resume")
    a, b = adapters_of(tmp_path / "two"), adapters_of(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(tmp_path / "two" / "metrics.jsonl") == read_jsonl(killed / "metrics.jsonl")

    one = run_train(*common, "--batch-size", 8, "--output-dir", killed, "--resume", check=False)
    assert one.returncode == 2 and "2 process(es), this run has 1" in one.stderr.strip().splitlines()[-1]
