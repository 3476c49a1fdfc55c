"""Tests for glue.py: metrics against hand-computed values, TSV parsing of every GLUE format,
error messages, hub-path wiring (mocked: no network here), tokenisation and dynamic padding (DataCollatorWithPadding),
and row counts / label balance on the real GLUE files when they are present."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import glue
from glue import DataError

GLUE_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "glue"))


# ---------------------------------------------------------------- metrics

def test_cola_mcc_by_hand():
    labels = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    preds = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    tp, fn, tn, fp = 4, 2, 3, 1  # read off the two lists above
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    m = glue.compute_metrics("CoLA", preds, labels)
    assert m["mcc"] == pytest.approx(100 * mcc)
    assert m["accuracy"] == pytest.approx(100 * (tp + tn) / 10)
    assert all(type(v) is float for v in m.values())


def _ranks(x):
    """1-based ranks, ties get the mean of the positions they occupy."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def _pearson(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    return (dx * dy).sum() / math.sqrt((dx ** 2).sum() * (dy ** 2).sum())


def test_stsb_pearson_spearman_by_hand():
    labels = [0.0, 1.2, 2.5, 2.5, 3.8, 5.0, 4.0]
    preds = [0.3, 1.0, 2.9, 2.0, 2.0, 4.7, 4.1]  # ties in both preds and labels
    assert _ranks([2.5, 1.0, 2.5]) == [2.5, 1.0, 2.5]
    m = glue.compute_metrics("sts-b", preds, labels)
    assert set(m) == {"pearson", "spearmanr"}
    assert m["pearson"] == pytest.approx(100 * _pearson(preds, labels))
    assert m["spearmanr"] == pytest.approx(100 * _pearson(_ranks(preds), _ranks(labels)))
    # a (N, 1) regression head output is the same thing
    m2 = glue.compute_metrics("stsb", torch.tensor(preds).unsqueeze(1), labels)
    assert m2["pearson"] == pytest.approx(m["pearson"], rel=1e-5)


def test_mrpc_f1_accuracy_by_hand_and_logits():
    labels = [1, 1, 1, 0, 0, 1, 0, 1]
    preds = [1, 0, 1, 1, 0, 1, 0, 0]
    tp, fp, fn = 3, 1, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    m = glue.compute_metrics("MRPC", preds, labels)
    assert m["f1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert m["accuracy"] == pytest.approx(100 * 5 / 8)
    logits = np.full((8, 2), -1.0)
    logits[np.arange(8), preds] = 2.0  # argmax recovers preds
    assert glue.compute_metrics("mrpc", logits, labels) == m


def test_degenerate_predictions_give_zero_not_nan():
    m = glue.compute_metrics("cola", [1, 1, 1, 1], [0, 1, 1, 0])
    assert m["mcc"] == 0.0 and m["accuracy"] == 50.0
    m = glue.compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 3.0, 4.5])
    assert m == {"pearson": 0.0, "spearmanr": 0.0}
    m = glue.compute_metrics("qqp", [0, 0, 0], [1, 0, 1])
    assert m["f1"] == 0.0


def test_headline_metric_in_every_tasks_metrics():
    assert glue.get_task("CoLA")["metric"] == "mcc"
    assert glue.get_task("STS-B")["metric"] == "pearson"
    assert glue.get_task("mrpc")["metric"] == "accuracy"
    for name, spec in glue.TASKS.items():
        n = spec["num_labels"]
        preds = [0.5, 1.5, 2.5] if n == 1 else [0, 1, 0]
        labels = [1.0, 2.0, 2.5] if n == 1 else [0, 1, 1]
        assert spec["metric"] in glue.compute_metrics(name, preds, labels)


def test_task_names():
    assert glue.get_task("SST-2")["name"] == "sst2"
    assert glue.get_task("sts_b")["name"] == "stsb"
    assert glue.get_task("QNLI")["num_labels"] == 2 and glue.get_task("mnli")["num_labels"] == 3
    with pytest.raises(DataError, match="known tasks: cola, sst2"):
        glue.get_task("squad")
    with pytest.raises(DataError, match="known tasks"):
        glue.load_split("boolq", "train", data_dir="/nonexistent")


# ---------------------------------------------------------------- TSV parsing

Q = 'He said " hello \'there\' ,'  # unbalanced quote: must survive verbatim

# task -> (dir, file, file text, text_a, text_b, labels)
FIXTURES = {
    "cola": ("CoLA", "train.tsv",
             f"gj04\t1\t\tThe cat sat.\ngj04\t0\t*\t{Q}\nclc95\t1\t\tLast line, no newline.",
             ["The cat sat.", Q, "Last line, no newline."], None, [1, 0, 1]),
    "sst2": ("SST-2", "dev.tsv", f"sentence\tlabel\nit 's a charming journey . \t1\n{Q}\t0\n",
             ["it 's a charming journey . ", Q], None, [1, 0]),
    "mrpc": ("MRPC", "train.tsv",
             "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
             f"1\t702876\t702977\t{Q}\tReferring to him .\n0\t2108705\t2108831\tA b .\tC d .\n",
             [Q, "A b ."], ["Referring to him .", "C d ."], [1, 0]),
    "qnli": ("QNLI", "train.tsv",
             "index\tquestion\tsentence\tlabel\n0\tWhen?\tIn 1990.\tentailment\n"
             "1\tWho?\tNobody knows.\tnot_entailment\n",
             ["When?", "Who?"], ["In 1990.", "Nobody knows."], [0, 1]),
    "rte": ("RTE", "dev.tsv",
            "index\tsentence1\tsentence2\tlabel\n0\tA dog ran.\tAn animal ran.\tentailment\n"
            f"1\t{Q}\tA cat flew.\tnot_entailment\n",
            ["A dog ran.", Q], ["An animal ran.", "A cat flew."], [0, 1]),
    "stsb": ("STS-B", "train.tsv",
             "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t5.000\n"
             f"1\tmain-news\theadlines\t2013\t0004\tnone\tnone\t{Q}\tB.\t0.250\n",
             ["A plane.", Q], ["An air plane.", "B."], [5.0, 0.25]),
    "mnli": ("MNLI", "dev_matched.tsv",
             "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
             "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
             "label4\tlabel5\tgold_label\n"
             + "".join(f"{i}\t1\t1e\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tP{i}\tH{i}\t{g}\t{g}\t{g}\t{g}\t{g}\t{g}\n"
                       for i, g in enumerate(["neutral", "contradiction", "entailment"])),
             ["P0", "P1", "P2"], ["H0", "H1", "H2"], [1, 2, 0]),
    "qqp": ("QQP", "train.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "133273\t213221\t213222\tHow is the life?\tHow is life?\t1\n5\t11\t12\tWhy?\tWhere?\t0\n",
            ["How is the life?", "Why?"], ["How is life?", "Where?"], [1, 0]),
    "wnli": ("WNLI", "dev.tsv",
             "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged.\tThe hair is clogged.\t0\n"
             "1\tI stuck a pin.\tThe pin had a hole.\t1\n",
             ["The drain is clogged.", "I stuck a pin."], ["The hair is clogged.", "The pin had a hole."],
             [0, 1]),
}


def _write(root, task_dir, fname, text):
    (root / task_dir).mkdir(parents=True, exist_ok=True)
    (root / task_dir / fname).write_text(text, encoding="utf-8")


@pytest.mark.parametrize("task", list(FIXTURES))
def test_tsv_formats(tmp_path, task):
    task_dir, fname, text, text_a, text_b, labels = FIXTURES[task]
    _write(tmp_path, task_dir, fname, text)
    d = glue.load_split(task, "train" if fname == "train.tsv" else "dev", data_dir=tmp_path)
    assert d == {"text_a": text_a, "text_b": text_b, "label": labels}
    assert all(type(y) is (float if task == "stsb" else int) for y in d["label"])


def test_mnli_train_has_fewer_label_columns(tmp_path):
    # MNLI train.tsv has label1 only: columns are found by header name, not position
    header = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
              "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n")
    _write(tmp_path, "MNLI", "train.tsv", header + "0\t1\t1n\tgov\t( a )\t( b )\t(a)\t(b)\tP\tH\tneutral\tneutral\n")
    assert glue.load_split("MNLI", "train", tmp_path) == {"text_a": ["P"], "text_b": ["H"], "label": [1]}


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("task,task_dir,text,where,what", [
    ("rte", "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", ":3:", "expected 4"),
    ("rte", "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", ":3:", "'maybe'"),
    ("sst2", "SST-2", "sentence\tlabel\ngood\t1\nbad\tneg\n", ":3:", "bad label"),
    ("sst2", "SST-2", "sentence\tlabel\ngood\t1\nbad\t2\n", ":3:", "out of range"),
    ("stsb", "STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\ty\to\ts\ts\ta\tb\tfive\n", ":2:", "bad label"),
    ("stsb", "STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\ty\to\ts\ts\ta\tb\t5.0\n1\tg\tf\ty\to\ts\ts\ta\tb\t5.2\n", ":3:", "score '5.2' outside [0, 5]"),
    ("stsb", "STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\ty\to\ts\ts\ta\tb\t-0.5\n", ":2:", "score '-0.5' outside [0, 5]"),
    ("cola", "CoLA", "gj04\t1\t\tfine.\ngj04\t1\tbroken row\n", ":2:", "expected 4"),
    ("mrpc", "MRPC", "\ufeffQuality\t#1 ID\t#2 ID\t#1 Str\t#2 String\n1\t1\t2\ta\tb\n", ":1:", "#1 String"),
])
def test_malformed_rows(tmp_path, task, task_dir, text, where, what):
    _write(tmp_path, task_dir, "train.tsv", text)
    with pytest.raises(DataError) as e:
        glue.load_split(task, "train", tmp_path)
    msg = str(e.value)
    assert f"{tmp_path / task_dir / 'train.tsv'}{where}" in msg and what in msg and "\n" not in msg


def test_non_utf8_byte_is_reported_as_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                                 b"1\tna\xefve caf\xe9\tb\tentailment\n")
    with pytest.raises(DataError) as e:
        glue.load_split("rte", "train", tmp_path)
    assert str(e.value) == f"{tmp_path / 'RTE' / 'train.tsv'}:3: not UTF-8 text (byte 0xef at column 5)"


def test_a_cell_over_the_csv_field_limit_is_read(tmp_path):
    import csv
    long = "word " * (csv.field_size_limit() // 5 + 10)
    _write(tmp_path, "RTE", "train.tsv", f"index\tsentence1\tsentence2\tlabel\n0\t{long}\tb\tentailment\n")
    assert glue.load_split("rte", "train", tmp_path)["text_a"] == [long]


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match=r"RTE: no such directory.*DIR/RTE/train.tsv"):
        glue.load_split("rte", "train", tmp_path)
    (tmp_path / "MNLI").mkdir()
    with pytest.raises(DataError, match=r"dev_matched.tsv: no such file"):
        glue.load_split("mnli", "dev", tmp_path)
    _write(tmp_path, "RTE", "train.tsv", "")
    with pytest.raises(DataError, match=r"train.tsv: empty file"):
        glue.load_split("rte", "train", tmp_path)
    _write(tmp_path, "RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match=r"dev.tsv: no examples"):
        glue.load_split("rte", "dev", tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        glue.load_split("rte", "test", tmp_path)


# ---------------------------------------------------------------- hub path (mocked)

def test_hub_failure_is_one_clear_line(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        glue.load_split("rte", "train")
    msg = str(e.value)
    assert "ConnectionError: Couldn't reach" in msg and "--data-dir DIR" in msg
    assert "DIR/RTE/train.tsv" in msg and "\n" not in msg


def test_hub_columns_and_splits(monkeypatch):
    import datasets
    calls = []

    def fake(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"premise": ["P0", "P1"], "hypothesis": ["H0", "H1"],
                                           "label": [2, 0], "idx": [0, 1]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    d = glue.load_split("MNLI", "dev")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert d == {"text_a": ["P0", "P1"], "text_b": ["H0", "H1"], "label": [2, 0]}
    assert type(d["text_a"]) is list


# ---------------------------------------------------------------- encode and padding (DataCollatorWithPadding)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(token_types):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran far away today", "is it raining"],
                            trainers.WordLevelTrainer(special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    names = ["input_ids", "token_type_ids", "attention_mask"] if token_types else ["input_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=names)


def test_encode_truncates_pairs_and_keeps_labels():
    tok = _tokenizer(token_types=True)
    data = {"text_a": ["the cat", "a dog ran far away today", "is it"],
            "text_b": ["sat", "the cat sat on the mat", "raining"], "label": [0, 1, 0]}
    ex = glue.encode(tok, data, max_len=8)
    ids = tok.convert_tokens_to_ids
    assert ex[0]["input_ids"] == ids(["[CLS]", "the", "cat", "[SEP]", "sat", "[SEP]"])
    assert ex[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert len(ex[1]["input_ids"]) == 8 and ex[1]["input_ids"][-1] == ids("[SEP]")  # 6 + 6 words cut to 8
    assert [e["label"] for e in ex] == [0, 1, 0]
    assert glue.encode(tok, data, max_len=8, chunk=2) == ex  # chunking does not change anything


def test_long_examples_are_always_cut_to_max_len():
    """However long a sentence (or both), every example fits max_len, down to the least a pair needs; a cell
    longer than encode's character cap is cut first and still fills max_len."""
    tok = _tokenizer(token_types=True)
    long = " ".join(["the cat sat on the mat"] * 20)
    data = {"text_a": [long, "the", long], "text_b": ["sat", long, long], "label": [0, 1, 0]}
    need = tok.num_special_tokens_to_add(pair=True) + 2
    for max_len in (need, 9, 64):
        assert all(len(e["input_ids"]) <= max_len for e in glue.encode(tok, data, max_len))
    huge = {"text_a": ["the cat sat " * 10000], "text_b": ["the mat"], "label": [1]}  # 120,000 characters
    assert len(glue.encode(tok, huge, 64)[0]["input_ids"]) == 64


def collate(tok, examples):
    from transformers import DataCollatorWithPadding
    return DataCollatorWithPadding(tok)(examples)


def test_collate_pads_dynamically():
    """The batches train.py feeds the model: encode() output padded by transformers' DataCollatorWithPadding."""
    tok = _tokenizer(token_types=False)  # RoBERTa-like: no token_type_ids
    data = {"text_a": ["the cat sat on the mat", "a dog", "is it raining"], "text_b": None, "label": [1, 0, 1]}
    ex = glue.encode(tok, data, max_len=32)
    assert "token_type_ids" not in ex[0]
    lens = [len(e["input_ids"]) for e in ex]
    assert lens == [8, 4, 5]
    b = collate(tok, ex)
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    assert b["input_ids"].shape == (3, 8) and b["input_ids"].dtype == torch.long  # longest in batch, not 32
    assert b["attention_mask"].sum(1).tolist() == lens
    assert b["attention_mask"].dtype == torch.long
    assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    assert b["input_ids"][1, :4].tolist() == ex[1]["input_ids"]
    assert b["labels"].tolist() == [1, 0, 1] and b["labels"].dtype == torch.long
    assert collate(tok, ex[1:])["input_ids"].shape == (2, 5)


def test_collate_token_types_and_regression_labels():
    tok = _tokenizer(token_types=True)
    data = {"text_a": ["the cat", "a dog ran"], "text_b": ["sat", "far"], "label": [4.2, 0.5]}
    b = collate(tok, glue.encode(tok, data, max_len=16))
    assert b["labels"].dtype == torch.float32 and b["labels"].tolist() == pytest.approx([4.2, 0.5])
    assert b["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]]


# ---------------------------------------------------------------- real GLUE files

@pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"real GLUE data not found at {GLUE_DIR} (set GLUE_DIR)")
@pytest.mark.parametrize("task,n_train,n_dev", [("cola", 8551, 1043), ("mrpc", 3668, 408),
                                                ("rte", 2490, 277), ("stsb", 5749, 1500)])
def test_real_glue(task, n_train, n_dev):
    train, dev = glue.load_split(task, "train", GLUE_DIR), glue.load_split(task, "dev", GLUE_DIR)
    assert len(train["label"]) == len(train["text_a"]) == n_train
    assert len(dev["label"]) == len(dev["text_a"]) == n_dev
    y = train["label"]
    if task == "stsb":
        assert round(sum(y) / len(y), 3) == 2.701 and min(y) >= 0.0 and max(y) <= 5.0
    else:
        assert (y.count(0), y.count(1)) == {"cola": (2528, 6023), "mrpc": (1194, 2474), "rte": (1249, 1241)}[task]
    if task == "mrpc":  # quotes kept verbatim, BOM gone from the header
        assert train["text_a"][0] == ('Amrozi accused his brother , whom he called " the witness " , '
                                      'of deliberately distorting his evidence .')
    if task == "cola":  # CoLA/dev.tsv has no trailing newline: its last sentence is still whole
        assert dev["text_a"][-1].endswith("himself.")


# ----------------------------------------------------------------------------- batch order

def _lengths(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 120, (n,), generator=g).tolist()


@pytest.mark.parametrize("group", [False, True])
def test_epoch_batches_cover_every_example_once_and_are_deterministic(group):
    lengths = _lengths()
    a = glue.epoch_batches(lengths, 32, seed=3, epoch=1, group_by_length=group)
    assert sorted(i for b in a for i in b) == list(range(len(lengths)))
    assert len(a) == -(-len(lengths) // 32) and all(1 <= len(b) <= 32 for b in a)
    assert a == glue.epoch_batches(lengths, 32, seed=3, epoch=1, group_by_length=group)
    assert a != glue.epoch_batches(lengths, 32, seed=3, epoch=2, group_by_length=group)
    assert a != glue.epoch_batches(lengths, 32, seed=4, epoch=1, group_by_length=group)


def test_plain_epoch_batches_are_the_seeded_permutation_cut_in_order():
    lengths = _lengths(100)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(7 * 100003 + 2)).tolist()
    assert glue.epoch_batches(lengths, 16, seed=7, epoch=2) == [perm[i:i + 16] for i in range(0, 100, 16)]


def test_group_by_length_cuts_padding_and_keeps_the_batch_order_shuffled():
    lengths = _lengths(4000)
    plain = glue.epoch_batches(lengths, 32, seed=0, epoch=0)
    grouped = glue.epoch_batches(lengths, 32, seed=0, epoch=0, group_by_length=True)
    assert glue.padding_fraction(lengths, grouped) < 0.5 * glue.padding_fraction(lengths, plain)
    longest = [max(lengths[i] for i in b) for b in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    # within each window of 50 batches the examples were sorted by length: a batch spans a narrow range
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped]
    assert sorted(spans)[len(spans) // 2] <= 5


def test_padding_fraction():
    assert glue.padding_fraction([2, 4, 4, 4], [[0, 1], [2, 3]]) == pytest.approx(1 - 14 / 16)
