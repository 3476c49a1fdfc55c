"""Shared helpers for the train.py tests: a tiny random RoBERTa and a tokenizer trained here on fixture text, saved
and loaded through the normal --model path; small GLUE-format TSV folders; a helper to run train.py."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_GLUE = Path(os.environ.get("GLUE_DIR", ROOT.parent / "shared" / "glue"))
WORDS = ("the a cat dog man woman sat ran saw ate on in park mat house red big small not very good bad "
         "he she it they said that was is were here there today").split()


def build_tiny_model(out_dir, texts, num_labels=2, layers=2, dropout=0.1):
    """Train a WordLevel tokenizer on `texts`, build a random RoBERTa for it, save both to `out_dir`.
    dropout=0 makes runs comparable across batch splits (--grad-accum, torchrun), which draw other dropout masks."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForSequenceClassification
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=2000,
                                                             special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(out_dir)
    cfg = RobertaConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=80, pad_token_id=1, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    RobertaForSequenceClassification(cfg).save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_decoder(out_dir, texts, arch="llama", num_labels=2):
    """A random tiny decoder (Llama or OPT) and a WordLevel tokenizer trained on `texts`, saved to `out_dir`. Like the
    real ones, the Llama tokenizer has no pad token and neither returns token_type_ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import (LlamaConfig, LlamaForSequenceClassification, OPTConfig, OPTForSequenceClassification,
                              PreTrainedTokenizerFast)
    specials = ["<s>", "</s>", "<unk>"] + (["<pad>"] if arch == "opt" else [])
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=2000, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>" if arch == "opt" else None,
                                   model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(out_dir)
    torch.manual_seed(0)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=80, bos_token_id=0,
                          eos_token_id=1, pad_token_id=None, num_labels=num_labels)
        LlamaForSequenceClassification(cfg).save_pretrained(out_dir)
    else:
        cfg = OPTConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=80, bos_token_id=0,
                        eos_token_id=1, pad_token_id=fast.pad_token_id, num_labels=num_labels, dropout=0.0)
        OPTForSequenceClassification(cfg).save_pretrained(out_dir)
    return str(out_dir)


def sentence(rng, n=None):
    return " ".join(rng.choice(WORDS) for _ in range(n or rng.randint(3, 9)))


def write_glue(root, n_train=48, n_dev=16, seed=0):
    """Small RTE (pairs, string labels), CoLA (no header) and STS-B (regression) folders in GLUE TSV format."""
    rng = random.Random(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("dev", n_dev)):
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        rows = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a, b = sentence(rng), sentence(rng)
            rows.append(f"{i}\t{a}\t{b}\t{'entailment' if 'not' in a + b else 'not_entailment'}")
        (root / "RTE" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        (root / "CoLA").mkdir(exist_ok=True)
        rows = [f"src\t{int('good' in s)}\t\t{s}" for s in (sentence(rng) for _ in range(n))]
        (root / "CoLA" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
        (root / "STS-B").mkdir(exist_ok=True)
        rows = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
        for i in range(n):
            rows.append(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{sentence(rng)}\t{sentence(rng)}\t{rng.uniform(0, 5):.3f}")
        (root / "STS-B" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    rng = random.Random(0)
    return build_tiny_model(tmp_path_factory.mktemp("model"), [sentence(rng) for _ in range(200)])


@pytest.fixture(scope="session")
def tiny_model_nodrop(tmp_path_factory):
    rng = random.Random(0)
    return build_tiny_model(tmp_path_factory.mktemp("model"), [sentence(rng) for _ in range(200)], dropout=0.0)


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory):
    return write_glue(tmp_path_factory.mktemp("glue"))


OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# What train.py imports, loaded once in a fork server: each run is then a fork of it (about 5 s of imports saved per
# run). The server is a fresh interpreter that has run no torch op, so no OpenMP pool exists to be broken by fork.
PRELOAD = ["torch", "transformers", "transformers.models.roberta.modeling_roberta", "transformers.models.bert.modeling_bert",
           "tokenizers", "sklearn.metrics", "scipy.stats", "allocate", "distributed", "figures", "glue", "hub",
           "importance", "lora", "memory", "precision", "shortcuts", "vera"]
_server = None


def _train_child(argv, cwd, stdout_path, stderr_path):
    """In the forked child: train.py as `python train.py ARGV` would run it, its output into two files."""
    import runpy
    os.chdir(cwd)
    for fd, path in ((1, stdout_path), (2, stderr_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
    sys.argv = [str(ROOT / "train.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_train(*flags, timeout=300, check=True):
    """Run train.py as a user would (`python train.py --no-progress FLAGS`, offline so a typo never waits on the hub);
    return a CompletedProcess. The process is forked from a server that has train.py's imports loaded: the same
    code, exit code and output as a fresh interpreter, without paying the imports each time."""
    import multiprocessing
    import tempfile
    global _server
    if _server is None:
        _server = multiprocessing.get_context("forkserver")
        saved = dict(os.environ)
        os.environ.update(OFFLINE)  # the server's environment is what every run sees
        sys.path.insert(0, str(ROOT))
        try:
            _server.set_forkserver_preload(PRELOAD)
            starter = _server.Process(target=int)  # starts the server now, with this environment
            starter.start()
            starter.join()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    argv = ["--no-progress", *map(str, flags)]
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = _server.Process(target=_train_child, args=(argv, os.getcwd(), out, err))
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["train.py", *argv], timeout)
        stdout, stderr = Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace")
    result = subprocess.CompletedProcess(["train.py", *argv], proc.exitcode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return result


def descendants(pid):
    """The pids of every process below `pid` (children, their children, ...), read from /proc."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
    found, todo = [], [pid]
    while todo:
        below = todo.pop()
        kids = [p for p, pp in parent.items() if pp == below]
        found += kids
        todo += kids
    return found


def kill_after_first_checkpoint(cmd, out, env=None, timeout=200, wait_for="checkpoint.pt"):
    """Start `cmd` (a run writing to `out`) in its own process group, so that SIGKILL reaches any workers it starts,
    kill it as soon as out/checkpoint.pt (or out/`wait_for`) exists, and return the step checkpoint.pt holds."""
    import signal
    import time
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not (Path(out) / wait_for).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # torchrun starts each worker in its own session, out of the group's reach: kill every descendant, or the
    # workers of a "killed" run would go on writing (and holding the run's lock) beside its --resume
    family = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["step"]


def saved_activation_bytes(module, *args, **kwargs):
    """Bytes of the distinct storages autograd saves for backward during module(*args, **kwargs),
    not counting parameter or buffer storages."""
    owned = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in owned:
            saved[s.data_ptr()] = (s.nbytes(), t)  # keep t alive so its storage address is not reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*args, **kwargs)
    return sum(n for n, _ in saved.values()), out


def outputs_and_grads(adapters, model, ids):
    """One training-mode forward and backward of `model` on `ids` (labels 0, 1, ...): each adapter's output
    and the gradient flowing into it, captured by hooks, keyed by module path."""
    outs, grads = {}, {}

    def capture(path):
        def hook(module, inp, out):
            outs[path] = out.detach().clone()
            if out.requires_grad:
                out.register_hook(lambda g: grads.__setitem__(path, g.detach().clone()))
        return hook
    handles = [a.register_forward_hook(capture(p)) for p, a in adapters.items()]
    model.train()
    torch.nn.functional.cross_entropy(model(input_ids=ids).logits, torch.arange(len(ids)) % 2).backward()
    for h in handles:
        h.remove()
    return outs, grads
