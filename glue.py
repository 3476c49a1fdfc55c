"""GLUE data and metrics: the task table, loading a split (Hugging Face hub or the classic GLUE
TSV files), tokenisation, and the official dev-set metrics. Batches are padded dynamically by
transformers' DataCollatorWithPadding (right padding, int64 ids and masks, float32 STS-B labels).

Labels always use the ids of the Hugging Face `nyu-mll/glue` dataset, whichever source they come
from, so a model trained on one source evaluates correctly on the other. Metrics are percentages
(0-100), the way the LoRA (Hu et al., 2021) and DynaLoRA papers report GLUE dev results.

    data = load_split("rte", "train", data_dir="../shared/glue")   # or data_dir=None for the hub
    examples = encode(tokenizer, data, max_len=128)
    collate = DataCollatorWithPadding(tokenizer)   # transformers': pads each batch to its longest example
    for idx in epoch_batches([len(e["input_ids"]) for e in examples], 32, seed=0, epoch=0, group_by_length=True):
        batch = collate([examples[i] for i in idx])
"""
import codecs
import math
import warnings
from pathlib import Path

import numpy as np
import torch

# hf: `nyu-mll/glue` config; hf_text: its text columns; hf_dev: its dev split.
# dir/dev_file: classic GLUE layout DIR/<dir>/train.tsv and DIR/<dir>/<dev_file>.
# text/label: TSV columns, by header name (or 0-based index for CoLA, whose train/dev have no header).
# classes: label strings in HF id order when the TSV spells labels out; None means the TSV already
# holds the HF ids (0/1), or the float score for STS-B (num_labels=1, regression, within score_range).
# labels: the label names of `nyu-mll/glue` in id order (None: STS-B, regression); they go into the model config.
# metric: the headline dev metric, the one the LoRA and DynaLoRA papers report.
TASKS = {
    "cola": dict(hf="cola", hf_text=("sentence",), hf_dev="validation", dir="CoLA", dev_file="dev.tsv",
                 header=False, ncols=4, text=(3,), label=1, classes=None, num_labels=2,
                 labels=("unacceptable", "acceptable"), metric="mcc"),
    "sst2": dict(hf="sst2", hf_text=("sentence",), hf_dev="validation", dir="SST-2", dev_file="dev.tsv",
                 header=True, text=("sentence",), label="label", classes=None, num_labels=2,
                 labels=("negative", "positive"), metric="accuracy"),
    "mrpc": dict(hf="mrpc", hf_text=("sentence1", "sentence2"), hf_dev="validation", dir="MRPC",
                 dev_file="dev.tsv", header=True, text=("#1 String", "#2 String"), label="Quality",
                 classes=None, num_labels=2, labels=("not_equivalent", "equivalent"), metric="accuracy"),
    "qnli": dict(hf="qnli", hf_text=("question", "sentence"), hf_dev="validation", dir="QNLI",
                 dev_file="dev.tsv", header=True, text=("question", "sentence"), label="label",
                 classes=("entailment", "not_entailment"), num_labels=2, labels=("entailment", "not_entailment"),
                 metric="accuracy"),
    "rte": dict(hf="rte", hf_text=("sentence1", "sentence2"), hf_dev="validation", dir="RTE",
                dev_file="dev.tsv", header=True, text=("sentence1", "sentence2"), label="label",
                classes=("entailment", "not_entailment"), num_labels=2, labels=("entailment", "not_entailment"),
                metric="accuracy"),
    "stsb": dict(hf="stsb", hf_text=("sentence1", "sentence2"), hf_dev="validation", dir="STS-B",
                 dev_file="dev.tsv", header=True, text=("sentence1", "sentence2"), label="score",
                 classes=None, num_labels=1, labels=None, score_range=(0.0, 5.0), metric="pearson"),
    "mnli": dict(hf="mnli", hf_text=("premise", "hypothesis"), hf_dev="validation_matched", dir="MNLI",
                 dev_file="dev_matched.tsv", header=True, text=("sentence1", "sentence2"),
                 label="gold_label", classes=("entailment", "neutral", "contradiction"), num_labels=3,
                 labels=("entailment", "neutral", "contradiction"), metric="accuracy"),
    "qqp": dict(hf="qqp", hf_text=("question1", "question2"), hf_dev="validation", dir="QQP",
                dev_file="dev.tsv", header=True, text=("question1", "question2"), label="is_duplicate",
                classes=None, num_labels=2, labels=("not_duplicate", "duplicate"), metric="accuracy"),
    # WNLI's TSV holds 1 = entailment, which is HF's id too (names: not_entailment, entailment).
    "wnli": dict(hf="wnli", hf_text=("sentence1", "sentence2"), hf_dev="validation", dir="WNLI",
                 dev_file="dev.tsv", header=True, text=("sentence1", "sentence2"), label="label",
                 classes=None, num_labels=2, labels=("not_entailment", "entailment"), metric="accuracy"),
}


class DataError(ValueError):
    """Bad task name, missing or malformed data; the message is one line meant for the user."""


def get_task(task):
    """The TASKS entry for a task as the user types it (SST-2, sst2, sts-b, ...), plus its 'name'."""
    name = task.lower().replace("-", "").replace("_", "")
    if name not in TASKS:
        raise DataError(f"unknown GLUE task {task!r}; known tasks: {', '.join(TASKS)}")
    return dict(TASKS[name], name=name)


def load_split(task, split, data_dir=None):
    """Load split "train" or "dev" as {'text_a': [str], 'text_b': [str] or None, 'label': [int|float]}.
    data_dir=None downloads `nyu-mll/glue` from the hub; otherwise reads DIR/<TaskDir>/{train,dev}.tsv."""
    spec = get_task(task)
    if split not in ("train", "dev"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'dev'")
    if data_dir is None:
        return _load_hub(spec, split)
    task_dir = Path(data_dir) / spec["dir"]
    if not task_dir.is_dir():
        raise DataError(f"{task_dir}: no such directory; expected the classic GLUE layout "
                        f"DIR/{spec['dir']}/train.tsv and DIR/{spec['dir']}/{spec['dev_file']}")
    return _read_tsv(spec, task_dir / ("train.tsv" if split == "train" else spec["dev_file"]))


def _load_hub(spec, split):
    import datasets
    hf_split = "train" if split == "train" else spec["hf_dev"]
    try:
        ds = datasets.load_dataset("nyu-mll/glue", spec["hf"], split=hf_split)
    except Exception as e:  # offline, hub down, renamed dataset: all end the same way for the user
        msg = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"could not reach the Hugging Face hub for nyu-mll/glue ({type(e).__name__}: {msg}); "
                        f"pass --data-dir DIR pointing at the classic GLUE TSV layout "
                        f"(DIR/{spec['dir']}/train.tsv, DIR/{spec['dir']}/{spec['dev_file']})") from e
    cols = [list(ds[c]) for c in spec["hf_text"]]  # datasets>=4 returns a lazy Column: make it a list
    cast = float if spec["num_labels"] == 1 else int
    return {"text_a": cols[0], "text_b": cols[1] if len(cols) > 1 else None,
            "label": [cast(y) for y in ds["label"]]}


def _parse_label(spec, value):
    """HF label id (or float score) for one TSV cell; raises ValueError saying what is wrong."""
    if spec["num_labels"] == 1:
        y = float(value)
        lo, hi = spec["score_range"]
        if not lo <= y <= hi:  # NaN too
            raise ValueError(f"score {value!r} outside [{lo:g}, {hi:g}]")
        return y
    if spec["classes"] is not None:
        if value not in spec["classes"]:
            raise ValueError(f"unknown label {value!r}, expected one of {', '.join(spec['classes'])}")
        return spec["classes"].index(value)
    y = int(value)
    if not 0 <= y < spec["num_labels"]:
        raise ValueError(f"label {y} out of range 0..{spec['num_labels'] - 1}")
    return y


def _read_tsv(spec, path):
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected the classic GLUE layout "
                        f"DIR/{spec['dir']}/train.tsv and DIR/{spec['dir']}/{spec['dev_file']}")
    # One row per line, cells split at tabs, no quoting: GLUE sentences carry unbalanced '"' characters that
    # quoted reading would swallow across tabs and lines (and the csv module caps a cell at 128 KiB).
    lines = []
    for i, raw in enumerate(path.read_bytes().removeprefix(codecs.BOM_UTF8).split(b"\n")):  # MRPC starts with a BOM
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{i + 1}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
        text = text.removesuffix("\r")
        if text:  # skip blank lines
            lines.append((i + 1, text.split("\t")))
    if not lines:
        raise DataError(f"{path}: empty file")
    if spec["header"]:
        (_, header), lines = lines[0], lines[1:]
        missing = [c for c in (*spec["text"], spec["label"]) if c not in header]
        if missing:
            raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                            f"(has: {', '.join(header)})")
        ncols, idx = len(header), [header.index(c) for c in spec["text"]]
        label_idx = header.index(spec["label"])
    else:
        ncols, idx, label_idx = spec["ncols"], list(spec["text"]), spec["label"]
    if not lines:
        raise DataError(f"{path}: no examples after the header")
    texts, labels = [[] for _ in idx], []
    for line, row in lines:
        if len(row) != ncols:
            raise DataError(f"{path}:{line}: expected {ncols} tab-separated columns, got {len(row)}")
        try:
            labels.append(_parse_label(spec, row[label_idx]))
        except ValueError as e:
            raise DataError(f"{path}:{line}: bad label: {e}") from None
        for t, i in zip(texts, idx):
            t.append(row[i])
    return {"text_a": texts[0], "text_b": texts[1] if len(texts) > 1 else None, "label": labels}


def compute_metrics(task, preds, labels):
    """Official GLUE dev metrics in percent, as a dict of Python floats.
    Classification: preds are class ids, or logits (N, C) that are argmaxed here; accuracy always,
    plus 'mcc' for CoLA and 'f1' (positive class 1) for MRPC/QQP. STS-B: 'pearson' and 'spearmanr'.
    Undefined values (constant predictions) count as 0.0 rather than NaN."""
    spec = get_task(task)
    preds = np.asarray(preds.detach().cpu() if hasattr(preds, "detach") else preds)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if spec["num_labels"] == 1:
        preds = preds.reshape(-1).astype(np.float64)  # (N,) or (N, 1) regression head
        labels = labels.astype(np.float64)
    elif preds.ndim == 2:
        preds = preds.argmax(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if spec["num_labels"] == 1:
        from scipy.stats import pearsonr, spearmanr
        if len(preds) < 2:
            return {"pearson": 0.0, "spearmanr": 0.0}
        with warnings.catch_warnings():  # constant input: scipy warns and returns NaN
            warnings.simplefilter("ignore")
            p, s = pearsonr(preds, labels)[0], spearmanr(preds, labels)[0]
        return {"pearson": _pct(p), "spearmanr": _pct(s)}
    out = {"accuracy": _pct(np.mean(preds == labels))}
    if spec["name"] == "cola":
        from sklearn.metrics import matthews_corrcoef
        out["mcc"] = _pct(matthews_corrcoef(labels, preds))  # 0.0 for constant predictions
    if spec["name"] in ("mrpc", "qqp"):
        from sklearn.metrics import f1_score
        out["f1"] = _pct(f1_score(labels, preds, zero_division=0))
    return out


def _pct(x):
    x = float(x)
    return 0.0 if math.isnan(x) else 100.0 * x


def encode(tokenizer, data, max_len, chunk=1024):
    """Tokenise a load_split() dict into a list of {'input_ids', ['token_type_ids'], 'label'}.
    Every example is truncated to max_len tokens (pairs longest-first); nothing is padded here:
    DataCollatorWithPadding pads each batch to its longest example and turns 'label' into 'labels'."""
    a, b, y = data["text_a"], data["text_b"], data["label"]
    # A cell is first cut to 16 characters per token of max(max_len, 256): the tokenizer's truncation of a pair
    # takes time quadratic in its length (minutes for one 100 KB cell). Only longer cells change (no GLUE cell
    # is: the longest, in RTE, has 1,392 characters), and they still yield max_len tokens unless theirs average
    # over 16 characters; at most the split of the budget between the two sentences can move by a token.
    cap = 16 * max(max_len, 256)
    a, b = [t[:cap] for t in a], None if b is None else [t[:cap] for t in b]
    examples = []
    for i in range(0, len(a), chunk):  # batched calls to the fast tokenizer, bounded memory
        enc = tokenizer(a[i:i + chunk], None if b is None else b[i:i + chunk],
                        truncation=True, max_length=max_len)
        tt = enc.get("token_type_ids")
        for j, ids in enumerate(enc["input_ids"]):
            ex = {"input_ids": ids, "label": y[i + j]}
            if tt is not None:
                ex["token_type_ids"] = tt[j]
            examples.append(ex)
    return examples


def epoch_batches(lengths, batch_size, seed, epoch, group_by_length=False, window=50):
    """The batches of one epoch, as lists of example indices: every example exactly once, deterministic in
    (seed, epoch), so that batch i of epoch e can be rebuilt after a resume.

    Plain: a permutation seeded by (seed, epoch), cut into consecutive batches.
    group_by_length (as Hugging Face Trainer's `group_by_length`): the same permutation is cut into windows of
    `window` batches; inside each window the examples are sorted by length (longest first, ties in permutation
    order) and cut into batches, so a batch holds examples of similar length and needs little padding. The
    batches of the whole epoch are then shuffled with the same generator, so the order stays random.
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    size = window * batch_size
    batches = []
    for w in range(0, len(perm), size):
        chunk = sorted(perm[w:w + size], key=lambda j: -lengths[j])  # sorted() is stable
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def padding_fraction(lengths, batches):
    """Share of the tokens in padded batches (right-padded to the longest in each) that are padding."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / padded

