"""Tests for lora.py on tiny random RoBERTa and BERT encoders (CPU, seeded, no downloads)."""
import math
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lora
from lora import LoRALinear, inject
from tiny import outputs_and_grads, saved_activation_bytes

ARCHS = ["roberta", "bert"]
ALL_TARGETS = "query,key,value,attn_out,ffn_in,ffn_out"


def lora_model(tiny_encoder, arch="roberta", targets="query,value", r=4, alpha=8.0, dropout=0.0, rslora=False,
               num_labels=2, seed=0):
    model = tiny_encoder(arch, num_labels, seed)
    adapters = inject(model, targets, lambda lin: LoRALinear(lin, r=r, alpha=alpha, dropout=dropout, rslora=rslora))
    return model, adapters


def randomize_b(adapters, seed=1):
    """Make every delta non-zero (B is zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters.values():
            a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=g) * 0.5)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def lora_param_names(adapters):
    return {f"{path}.{n}" for path in adapters for n in ("lora_A", "lora_B")}


# ---------------------------------------------------------------- 1. zero init

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("targets", ["query,value", "all"])
def test_zero_init_b_leaves_logits_unchanged(tiny_encoder, tiny_ids, arch, targets):
    base = tiny_encoder(arch, 3)
    model, adapters = lora_model(tiny_encoder, arch, targets, dropout=0.1, num_labels=3)
    model.eval()
    assert len(adapters) == (4 if targets == "query,value" else 12)
    for a in adapters.values():
        assert torch.count_nonzero(a.lora_B) == 0
        assert torch.count_nonzero(a.lora_A) == a.lora_A.numel()  # A is random (kaiming), only B starts at 0
    assert torch.equal(logits(model, tiny_ids), logits(base, tiny_ids))


# ---------------------------------------------------------------- 2. parity with the formula

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rslora", [False, True])
def test_output_equals_lora_formula(tiny_encoder, tiny_ids, arch, rslora):
    r, alpha = 4, 8.0
    model, adapters = lora_model(tiny_encoder, arch, ALL_TARGETS, r=r, alpha=alpha, dropout=0.1, rslora=rslora)
    randomize_b(adapters)
    model.eval()
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    seen = {}
    hooks = [a.register_forward_hook(lambda m, inp, out, p=p: seen.__setitem__(p, (inp[0], out)))
             for p, a in adapters.items()]
    logits(model, tiny_ids)
    for h in hooks:
        h.remove()
    assert set(seen) == set(adapters)
    for path, a in adapters.items():
        x, h = seen[path]
        W, b, A, B = a.base.weight, a.base.bias, a.lora_A, a.lora_B
        expected = x @ W.T + b + scaling * ((x @ A.T) @ B.T)  # W x + b + scaling B A x
        torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(h, x @ W.T + b, atol=1e-3)  # the delta is really there


# ---------------------------------------------------------------- 3. merge / unmerge

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rslora", [False, True])
def test_merge_unmerge_and_mode_switches(tiny_encoder, tiny_ids, arch, rslora):
    r, alpha = 4, 16.0
    model, adapters = lora_model(tiny_encoder, arch, ALL_TARGETS, r=r, alpha=alpha, dropout=0.1, rslora=rslora)
    randomize_b(adapters)
    model.eval()
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    originals = {p: a.base.weight.detach().clone() for p, a in adapters.items()}
    before = logits(model, tiny_ids)

    lora.merge(adapters)
    assert all(a.merged for a in adapters.values())
    for p, a in adapters.items():  # merge equals W + scaling B A
        torch.testing.assert_close(a.base.weight, originals[p] + scaling * a.lora_B @ a.lora_A, rtol=0, atol=1e-6)
    assert (logits(model, tiny_ids) - before).abs().max() < 1e-5
    merged_weights = {p: a.base.weight.detach().clone() for p, a in adapters.items()}
    lora.merge(adapters)  # merging again is a no-op
    assert all(torch.equal(a.base.weight, merged_weights[p]) for p, a in adapters.items())

    # .train() / .eval() never merge, unmerge or touch weights
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (model.train, model.eval, model.train, model.eval):
        mode()
        assert all(a.merged for a in adapters.values())
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    lora.unmerge(adapters)
    assert not any(a.merged for a in adapters.values())
    for p, a in adapters.items():
        assert (a.base.weight - originals[p]).abs().max() < 1e-6
    assert (logits(model, tiny_ids) - before).abs().max() < 1e-5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.eval()
    assert not any(a.merged for a in adapters.values())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- 4. what trains

@pytest.mark.parametrize("arch", ARCHS)
def test_only_adapters_and_head_train_and_base_does_not_move(tiny_encoder, tiny_ids, arch):
    model, adapters = lora_model(tiny_encoder, arch, "query,value,ffn_out", dropout=0.1)
    expected = lora_param_names(adapters) | {f"{path}.{n}" for path, m in lora.head_modules(model).items()
                                             for n, _ in m.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in expected}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in expected}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1])
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(input_ids=tiny_ids).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    for n, v in frozen.items():
        assert torch.equal(params[n], v), n
        assert params[n].grad is None, n
    for n, v in start.items():
        assert not torch.equal(params[n], v), f"{n} did not train"


def test_bert_pooler_trains_as_part_of_the_head(tiny_encoder, tiny_ids):
    """BERT's classifier reads the pooler (dense + tanh on [CLS]); RoBERTa's head has its own dense layer. So the
    trained head of a BERT-family model is pooler + classifier, the equivalent of RoBERTa's classifier."""
    bert, _ = lora_model(tiny_encoder, "bert")
    assert list(lora.head_modules(bert)) == ["bert.pooler", "classifier"]
    assert all(p.requires_grad for p in bert.bert.pooler.parameters())
    head_ids = {id(p) for p in lora.head_parameters(bert)}
    assert all(id(p) in head_ids for p in bert.bert.pooler.parameters())
    assert any(k.startswith("bert.pooler.") for k in lora.adapter_state_dict(bert, _))
    roberta, _ = lora_model(tiny_encoder, "roberta")
    assert list(lora.head_modules(roberta)) == ["classifier"] and roberta.roberta.pooler is None
    before = bert.bert.pooler.dense.weight.detach().clone()
    opt = torch.optim.AdamW(lora.head_parameters(bert), lr=1e-2)
    bert.train()
    F.cross_entropy(bert(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(bert.bert.pooler.dense.weight, before)


# ---------------------------------------------------------------- 5. parameter count

def test_parameter_count_roberta_base_query_value_r8():
    from transformers import RobertaConfig, RobertaForSequenceClassification
    with torch.device("meta"):  # the real architecture, without allocating 125M weights
        model = RobertaForSequenceClassification(RobertaConfig())
    adapters = inject(model, "query,value", lambda lin: LoRALinear(lin, r=8, alpha=16))
    assert len(adapters) == 24
    n_adapter = sum(p.numel() for a in adapters.values() for p in a.adapter_params())
    assert n_adapter == 294_912  # 12 layers x 2 modules x 8 x (768 + 768)
    n_head = sum(p.numel() for p in lora.head_parameters(model))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_adapter + n_head


# ---------------------------------------------------------------- 6. importance accumulators

def tracked_model(tiny_encoder, arch, **kw):
    model, adapters = lora_model(tiny_encoder, arch, "query,value", dropout=0.1, **kw)
    randomize_b(adapters)
    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = True
    return model, adapters


def scores(adapters):
    return {p: (a.fwd_score.item(), a.grad_score.item(), a.param_grad_score.item()) for p, a in adapters.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_accumulators_equal_hand_computed_norms(tiny_encoder, tiny_ids, arch):
    model, adapters = tracked_model(tiny_encoder, arch)
    inactive = "layer.1.attention.self.value"
    inactive = next(p for p in adapters if inactive in p)
    adapters[inactive].set_active(False)
    outs, grads = outputs_and_grads(adapters, model, tiny_ids)

    assert set(grads) == set(adapters)  # backward reaches every module, inactive ones too
    for p, a in adapters.items():
        torch.testing.assert_close(a.fwd_score, outs[p].norm(dim=-1).sum(), rtol=1e-5, atol=0)
        torch.testing.assert_close(a.grad_score, grads[p].norm(dim=-1).sum(), rtol=1e-5, atol=0)
        assert a.grad_score > 0
        if p == inactive:
            assert a.param_grad_score == 0
        else:
            torch.testing.assert_close(a.param_grad_score, a.lora_A.grad.norm() + a.lora_B.grad.norm(),
                                       rtol=1e-5, atol=0)
            assert a.param_grad_score > 0
        assert a.n_updates == 0  # counted by the optimizer code, not here


@pytest.mark.parametrize("arch", ARCHS)
def test_param_grad_score_sums_per_pass_norms_under_grad_accumulation(tiny_encoder, tiny_ids, arch):
    model, adapters = tracked_model(tiny_encoder, arch)
    model.train()
    labels = torch.tensor([0, 1])
    for _ in range(2):  # two identical passes (same dropout masks), no zero_grad in between
        torch.manual_seed(7)
        F.cross_entropy(model(input_ids=tiny_ids).logits, labels).backward()
    for a in adapters.values():
        per_pass = (a.lora_A.grad / 2).norm() + (a.lora_B.grad / 2).norm()
        torch.testing.assert_close(a.param_grad_score, 2 * per_pass, rtol=1e-5, atol=0)


def test_param_grad_tracking_survives_deepcopy(tiny_encoder, tiny_ids):
    import copy
    model, adapters = tracked_model(tiny_encoder, "roberta")
    first = next(iter(adapters))
    adapters[first].set_active(False)  # a copy of an inactive adapter must get its hooks back too
    clone = copy.deepcopy(model).train()
    copied = {n: clone.get_submodule(n) for n in adapters}
    F.cross_entropy(clone(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
    for n, a in copied.items():
        expected = 0.0 if n == first else (a.lora_A.grad.norm() + a.lora_B.grad.norm()).item()
        assert a.param_grad_score.item() == pytest.approx(expected, rel=1e-5)
        assert all(p.requires_grad == (n != first) for p in a.adapter_params())
    assert all(a.param_grad_score == 0 for a in adapters.values())  # the original is untouched


@pytest.mark.parametrize("arch", ARCHS)
def test_accumulators_only_count_tracked_training_passes(tiny_encoder, tiny_ids, arch):
    model, adapters = tracked_model(tiny_encoder, arch)
    labels = torch.tensor([0, 1])
    zero = {p: (0.0, 0.0, 0.0) for p in adapters}

    model.eval()  # eval mode, even with a backward
    F.cross_entropy(model(input_ids=tiny_ids).logits, labels).backward()
    assert scores(adapters) == zero
    model.train()
    with torch.no_grad():
        model(input_ids=tiny_ids)
    assert scores(adapters) == zero

    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = False
    F.cross_entropy(model(input_ids=tiny_ids).logits, labels).backward()
    assert scores(adapters) == zero

    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = True
    F.cross_entropy(model(input_ids=tiny_ids).logits, labels).backward()
    assert all(min(s) > 0 for s in scores(adapters).values())
    for a in adapters.values():
        a.reset_scores()
    assert scores(adapters) == zero


# ---------------------------------------------------------------- 7. inactive adapters

@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_adapter_has_no_grad_but_keeps_its_delta(tiny_encoder, tiny_ids, arch):
    base = tiny_encoder(arch)
    model, adapters = lora_model(tiny_encoder, arch, "query,value", dropout=0.1)
    randomize_b(adapters)
    model.train()
    F.cross_entropy(model(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
    assert all(a.lora_A.grad is not None for a in adapters.values())
    model.eval()
    active_logits = logits(model, tiny_ids)

    layer1 = {p: a for p, a in adapters.items() if ".layer.1." in p}
    for a in layer1.values():
        a.set_active(False)
        assert not a.active and not any(p.requires_grad for p in a.adapter_params())
        assert a.lora_A.grad is None and a.lora_B.grad is None
    model.zero_grad(set_to_none=True)
    model.train()
    F.cross_entropy(model(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
    for p, a in adapters.items():
        if p in layer1:
            assert a.lora_A.grad is None and a.lora_B.grad is None
        else:
            assert a.lora_A.grad is not None and a.lora_B.grad is not None
    model.eval()
    inactive_logits = logits(model, tiny_ids)
    assert torch.equal(inactive_logits, active_logits)  # the frozen delta still applies
    assert (inactive_logits - logits(base, tiny_ids)).abs().max() > 1e-4

    for a in layer1.values():
        a.set_active(True)
        assert all(p.requires_grad for p in a.adapter_params())


def replace_with_base(model, paths):
    for path in paths:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, model.get_submodule(path).base)


@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_lora_saves_no_activations(tiny_encoder, tiny_ids, arch):
    import copy
    model, adapters = lora_model(tiny_encoder, arch, "query,value,ffn_out", dropout=0.1)
    randomize_b(adapters)
    layer1 = [p for p in adapters if ".layer.1." in p]
    for p in layer1:  # layer 0 stays active, so layer 1 sees inputs that require grad
        adapters[p].set_active(False)
    plain = copy.deepcopy(model)
    replace_with_base(plain, layer1)
    assert sum(isinstance(m, LoRALinear) for m in plain.modules()) == len(adapters) - len(layer1)
    model.train()
    plain.train()

    with_inactive, out = saved_activation_bytes(model, input_ids=tiny_ids)
    without, _ = saved_activation_bytes(plain, input_ids=tiny_ids)
    assert out.logits.requires_grad
    assert with_inactive == without

    for p in layer1:  # sanity: the counter does see what an active adapter saves
        adapters[p].set_active(True)
    all_active, _ = saved_activation_bytes(model, input_ids=tiny_ids)
    assert all_active > without

    # one module on its own: an inactive adapter saves exactly what its base linear saves
    a = adapters[layer1[0]]
    a.set_active(False)
    x = torch.randn(2, 7, a.in_features, requires_grad=True)
    n_adapter, h = saved_activation_bytes(a, x)
    n_base, _ = saved_activation_bytes(a.base, x)
    assert h.requires_grad and n_adapter == n_base
    a.set_active(True)
    assert saved_activation_bytes(a, x)[0] > n_base  # active with dropout: mask, dropped x, A x


# ---------------------------------------------------------------- 8. save / load

def fill_randomly(model, adapters, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lora.adapter_state_dict(model, adapters).values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)  # about the scale of trained values
            else:
                t.copy_(torch.randint(1, 100, t.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_and_mismatch(tiny_encoder, tiny_ids, arch, tmp_path):
    model, adapters = lora_model(tiny_encoder, arch, "query,value,ffn_in")
    fill_randomly(model, adapters, seed=3)
    path = tmp_path / "adapters.safetensors"
    lora.save_adapters(str(path), model, adapters, metadata={"r": "4"})

    fresh, fresh_adapters = lora_model(tiny_encoder, arch, "query,value,ffn_in")
    saved = {k: v.clone() for k, v in lora.adapter_state_dict(model, adapters).items()}
    assert any(k.endswith("fwd_score") for k in saved) and any(k.endswith("lora_A") for k in saved)
    assert all(any(k.startswith(path + ".") for k in saved) for path in lora.head_modules(model))
    assert not any(torch.equal(v, lora.adapter_state_dict(fresh, fresh_adapters)[k])
                   for k, v in saved.items() if k.endswith("lora_B"))
    lora.load_adapters(str(path), fresh, fresh_adapters)
    loaded = lora.adapter_state_dict(fresh, fresh_adapters)
    assert set(loaded) == set(saved)
    for k, v in saved.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    assert torch.equal(logits(fresh, tiny_ids), logits(model, tiny_ids))

    other_rank, other_rank_adapters = lora_model(tiny_encoder, arch, "query,value,ffn_in", r=2)
    with pytest.raises(ValueError, match="has shape"):
        lora.load_adapters(str(path), other_rank, other_rank_adapters)
    other_targets, other_targets_adapters = lora_model(tiny_encoder, arch, "query,value")
    with pytest.raises(ValueError, match="does not match the model"):
        lora.load_adapters(str(path), other_targets, other_targets_adapters)


# ---------------------------------------------------------------- 9. merged export

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("merge_first", [False, True])
def test_export_merged_loads_as_plain_hf_model(tiny_encoder, tiny_ids, arch, merge_first, tmp_path):
    from transformers import AutoModelForSequenceClassification
    model, adapters = lora_model(tiny_encoder, arch, ALL_TARGETS, num_labels=3)
    fill_randomly(model, adapters, seed=5)
    model.eval()
    expected = logits(model, tiny_ids)
    if merge_first:
        lora.merge(adapters)
    lora.export_merged(str(tmp_path / "merged"), model, adapters)

    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert type(plain).__name__ == type(model).__name__
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in plain.modules())
    assert (logits(plain, tiny_ids) - expected).abs().max() < 1e-5
    assert not any(n.startswith(".tmp-") for n in (p.name for p in tmp_path.iterdir()))


# ---------------------------------------------------------------- 10. PEFT export

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("targets,rslora", [("query,value", False), ("query,value,attn_out,ffn_out", True),
                                            ("ffn_out", False)])  # "output.dense" alone would also hit attn_out
def test_export_peft_loads_with_peft(tiny_encoder, tiny_ids, arch, targets, rslora, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification
    base = tiny_encoder(arch, num_labels=3)
    base.save_pretrained(str(tmp_path / "base"))
    model, adapters = lora_model(tiny_encoder, arch, targets, r=4, alpha=8, rslora=rslora, num_labels=3)
    fill_randomly(model, adapters, seed=9)
    model.eval()
    expected = logits(model, tiny_ids)
    assert (expected - logits(base, tiny_ids)).abs().max() > 1e-4
    lora.export_peft(str(tmp_path / "peft"), model, adapters, base_model_name_or_path=str(tmp_path / "base"))

    fresh = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base"))
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    n_lora = sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in peft_model.modules())
    assert n_lora == len(adapters)
    assert (logits(peft_model, tiny_ids) - expected).abs().max() < 1e-5
    for path, module in lora.head_modules(model).items():  # BERT: pooler and classifier; RoBERTa: classifier
        own_head = module.state_dict()
        peft_head = {k.split(".default.", 1)[1]: v for k, v in peft_model.state_dict().items()
                     if f"{path}.modules_to_save.default." in k}
        assert set(peft_head) == set(own_head)
        assert all(torch.equal(peft_head[k], v) for k, v in own_head.items())


def test_export_peft_refuses_mixed_ranks(tiny_encoder, tmp_path):
    model = tiny_encoder("roberta")
    ranks = iter([2, 4, 2, 4])
    adapters = inject(model, "query,value", lambda lin: LoRALinear(lin, r=next(ranks)))
    with pytest.raises(ValueError, match="one r and alpha"):
        lora.export_peft(str(tmp_path / "peft"), model, adapters)
    assert not (tmp_path / "peft").exists()


# ---------------------------------------------------------------- 11. bad input

@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_targets(tiny_encoder, arch):
    model = tiny_encoder(arch)
    for bad in ("query,vlaue", "", ["attention"]):
        with pytest.raises(ValueError, match="unknown target module"):
            inject(model, bad, LoRALinear)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


@pytest.mark.parametrize("r", [0, -1, 1.5])
def test_rank_below_one_or_fractional(tiny_encoder, r):
    with pytest.raises(ValueError, match="LoRA rank r must be an integer >= 1"):
        inject(tiny_encoder("roberta"), "query", lambda lin: LoRALinear(lin, r=r))
    with pytest.raises(ValueError, match="LoRA rank r must be an integer >= 1"):
        LoRALinear(nn.Linear(4, 4), r=r)


@pytest.mark.parametrize("arch", ARCHS)
def test_wrapping_twice(tiny_encoder, arch):
    model, adapters = lora_model(tiny_encoder, arch, "query")
    with pytest.raises(ValueError, match="refusing to wrap twice"):
        inject(model, "value", LoRALinear)
    with pytest.raises(TypeError, match="can only wrap an nn.Linear once"):
        LoRALinear(next(iter(adapters.values())))
    with pytest.raises(TypeError, match="can only wrap an nn.Linear once, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1))


def test_model_without_matching_layers(tiny_encoder):
    with pytest.raises(ValueError, match=r"no nn.Linear in Sequential matches targets \['query', 'value'\]"):
        inject(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "query,value", LoRALinear)
    named = nn.Sequential(OrderedDict(query=nn.Linear(4, 4), value=nn.Linear(4, 4)))  # not BERT-style paths
    with pytest.raises(ValueError, match="expected BERT/RoBERTa-style module names"):
        inject(named, "query,value", LoRALinear)


def test_model_without_head_is_refused_before_any_change(tiny_encoder):
    encoder = tiny_encoder("roberta").roberta  # bare RobertaModel: matching layers, no classifier
    with pytest.raises(ValueError, match="has no classification head named classifier or score"):
        inject(encoder, "query,value", LoRALinear)
    assert not any(isinstance(m, LoRALinear) for m in encoder.modules())
    assert all(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_exports_respect_the_umask(tiny_encoder, tmp_path, umask):
    """adapter/ and merged/ get the modes ordinary files get, not mkdtemp's 0700 and safetensors' 0600."""
    model = tiny_encoder("roberta")
    adapters = lora.inject(model, "query,value", lambda lin: lora.LoRALinear(lin, r=2, alpha=2))
    old = os.umask(umask)
    try:
        lora.export_peft(str(tmp_path / "adapter"), model, adapters)
        lora.export_merged(str(tmp_path / "merged"), model, adapters)
        lora.save_adapters(str(tmp_path / "adapters.safetensors"), model, adapters)
    finally:
        os.umask(old)
    modes = {os.path.relpath(os.path.join(r, n), tmp_path): os.stat(os.path.join(r, n)).st_mode & 0o777
             for r, ds, fs in os.walk(tmp_path) for n in ds + fs}
    assert modes["adapter"] == modes["merged"] == 0o777 & ~umask
    assert {m for p, m in modes.items() if p not in ("adapter", "merged")} == {0o666 & ~umask}
    assert "merged/model.safetensors" in modes and "adapter/adapter_model.safetensors" in modes
