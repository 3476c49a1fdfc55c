"""Decoder language models as targets: Llama/Mistral/Qwen and OPT names chosen by config.model_type, sequence
classification with the `score` head and a pad token, DynaLoRA through train.py, and the PEFT export."""
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import lora
from tiny import build_tiny_decoder, glue_dir, run_train, sentence  # noqa: F401 (fixtures)


def tiny_config(kind):
    from transformers import LlamaConfig, MistralConfig, OPTConfig, Qwen2Config
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                  pad_token_id=0)
    if kind == "opt":
        return OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **common)
    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind](
        num_key_value_heads=2, intermediate_size=64, **common)


def seq_cls(kind):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(kind)).eval()


@pytest.mark.parametrize("kind,expected", [
    ("llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("mistral", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("qwen2", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    ("opt", ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]),
])
def test_target_names_by_model_type(kind, expected):
    model = seq_cls(kind)
    table, default, _ = lora.targets_for(model)
    assert list(table) == expected and default == "q_proj,v_proj"
    adapters = lora.inject(model, "all", lambda lin: lora.LoRALinear(lin, r=2))
    assert len(adapters) == 2 * len(expected)
    # ordered by layer, then by the table's order; each path ends with its short name
    assert [p.rsplit(".", 1)[1] for p in adapters] == expected * 2
    assert [lora.layer_index(p) for p in adapters] == [0] * len(expected) + [1] * len(expected)
    assert {n for n, q in model.named_parameters() if q.requires_grad} == \
        {f"{p}.lora_{x}" for p in adapters for x in "AB"} | {"score.weight"}


def test_encoder_names_on_a_decoder_and_unknown_model_types_are_refused():
    with pytest.raises(ValueError, match=r"unknown target module\(s\) \['query'\]; choose from q_proj"):
        lora.inject(seq_cls("llama"), "query,v_proj", lambda lin: lora.LoRALinear(lin, r=2))
    from transformers import GPT2Config, GPT2ForSequenceClassification
    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="no adapter target names for model type 'gpt2'.*known types: bert"):
        lora.inject(gpt2, "all", lambda lin: lora.LoRALinear(lin, r=2))


def test_opt_exports_to_peft(tmp_path):
    peft = pytest.importorskip("peft")
    model = seq_cls("opt")
    model.save_pretrained(tmp_path / "base")
    adapters = lora.inject(model, "q_proj,v_proj,fc1", lambda lin: lora.LoRALinear(lin, r=2, alpha=4))
    for a in adapters.values():
        torch.nn.init.normal_(a.lora_B)
    torch.nn.init.normal_(model.score.weight)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])  # the second one right-padded (pad_token_id 0)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    lora.export_peft(str(tmp_path / "peft"), model, adapters)
    from transformers import AutoModelForSequenceClassification
    fresh = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=(ids != 0).long()).logits
    assert (got - expected).abs().max() < 1e-5


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    rng = random.Random(0)
    return build_tiny_decoder(tmp_path_factory.mktemp("llama"), [sentence(rng) for _ in range(200)], "llama")


def test_tiny_llama_trains_with_dynalora_and_exports_to_peft(tmp_path, tiny_llama, glue_dir):
    """The tokenizer has no pad token: train.py pads with EOS and tells the `score` head, so that a padded sequence
    is classified as it is alone. The PEFT export and the merged export give the trained model's logits."""
    out = tmp_path / "run"
    run_train("--task", "rte", "--model", tiny_llama, "--data-dir", glue_dir, "--targets", "all", "--active", 4,
              "--rank", 2, "--period", 2, "--max-steps", 6, "--eval-every", 6, "--batch-size", 8, "--max-len", 24,
              "--lr", 1e-2, "--importance", "gradient", "--output-dir", out)
    allocs = [json.loads(line) for line in open(out / "metrics.jsonl") if '"active"' in line]
    assert [a["step"] for a in allocs] == [0, 2, 4] and all(len(a["active"]) == 4 for a in allocs)
    assert all(min(a["scores"]) > 0 for a in allocs)  # every module measured (gradient: the re-allocation probe)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["score"] and len(cfg["target_modules"]) == 14  # 7 names x 2 layers
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0
               for k, v in load_file(out / "adapter" / "adapter_model.safetensors").items())

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    assert tok.pad_token == tok.eos_token and merged.config.pad_token_id == tok.eos_token_id
    texts = ["the cat sat on the mat", "a dog"]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert (enc["input_ids"][1] == tok.pad_token_id).sum() > 1  # padded past its own EOS
    with torch.no_grad():
        batched = merged(**enc).logits
        alone = torch.cat([merged(**tok([t], return_tensors="pt")).logits for t in texts])
    assert (batched - alone).abs().max() < 1e-5
    peft = pytest.importorskip("peft")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, pad_token_id=tok.pad_token_id).eval()
    loaded = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    with torch.no_grad():
        assert (loaded(**enc).logits - batched).abs().max() < 1e-5
