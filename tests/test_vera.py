"""Tests for vera.py on tiny random RoBERTa and BERT encoders (CPU, seeded, no downloads)."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

import lora
import vera
from lora import LoRALinear
from tiny import outputs_and_grads, saved_activation_bytes
from vera import VeRALinear, inject_vera

ARCHS = ["roberta", "bert"]
ALL_TARGETS = "query,key,value,attn_out,ffn_in,ffn_out"


def vera_model(tiny_encoder, arch="roberta", targets="query,value", r=16, d_initial=0.1, dropout=0.0, seed=0,
               num_labels=2):
    model = tiny_encoder(arch, num_labels)
    return model, inject_vera(model, targets, r=r, d_initial=d_initial, dropout=dropout, seed=seed)


def randomize_lambdas(adapters, seed=1):
    """lambda_b starts at zero; give both vectors non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters.values():
            a.lambda_b.copy_(torch.randn(a.lambda_b.shape, generator=g) * 0.5)
            a.lambda_d.copy_(torch.randn(a.lambda_d.shape, generator=g) * 0.5)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- 1. zero init

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("targets", ["query,value", "all"])
def test_zero_init_lambda_b_leaves_logits_unchanged(tiny_encoder, tiny_ids, arch, targets):
    base = tiny_encoder(arch, 3)
    model, adapters = vera_model(tiny_encoder, arch, targets, d_initial=0.1, dropout=0.1, num_labels=3)
    model.eval()
    for a in adapters.values():
        assert torch.count_nonzero(a.lambda_b) == 0
        assert torch.equal(a.lambda_d, torch.full((16,), 0.1))
    assert torch.equal(logits(model, tiny_ids), logits(base, tiny_ids))


# ---------------------------------------------------------------- 2. parity and the shared projections

@pytest.mark.parametrize("arch", ARCHS)
def test_output_equals_vera_formula(tiny_encoder, tiny_ids, arch):
    model, adapters = vera_model(tiny_encoder, arch, ALL_TARGETS, r=16, dropout=0.1)
    randomize_lambdas(adapters)
    model.eval()
    seen = {}
    hooks = [a.register_forward_hook(lambda m, inp, out, p=p: seen.__setitem__(p, (inp[0], out)))
             for p, a in adapters.items()]
    logits(model, tiny_ids)
    for h in hooks:
        h.remove()
    assert set(seen) == set(adapters)
    assert {(a.in_features, a.out_features) for a in adapters.values()} == {(32, 32), (32, 64), (64, 32)}
    for path, a in adapters.items():
        x, h = seen[path]
        A = a.shared.vera_A[:, :a.in_features]    # (r, in)
        B = a.shared.vera_B[:a.out_features, :]   # (out, r)
        expected = x @ a.base.weight.T + a.base.bias + a.lambda_b * ((a.lambda_d * (x @ A.T)) @ B.T)
        torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(h, x @ a.base.weight.T + a.base.bias, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_projections(tiny_encoder, arch, tmp_path):
    r, seed = 16, 3
    model, adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in,ffn_out", r=r, seed=seed)
    shared = {id(a.shared) for a in adapters.values()}
    assert len(shared) == 1  # one module, hence one A and one B, for every layer
    first = next(iter(adapters.values())).shared
    assert all(a.shared.vera_A is first.vera_A and a.shared.vera_B is first.vera_B for a in adapters.values())
    max_in, max_out = 64, 64  # ffn_out reads 64 features, ffn_in writes 64
    assert first.vera_A.shape == (r, max_in) and first.vera_B.shape == (max_out, r)
    assert not first.vera_A.requires_grad and not first.vera_B.requires_grad

    # reference: VeRA's (and PEFT's) kaiming-uniform with gain sqrt(2), bound sqrt(6 / fan_in), drawn from a
    # generator seeded the same way, A then B; torch's own kaiming_uniform_(a=0) uses the same bound
    g = torch.Generator().manual_seed(seed)
    ref_A = nn.init.kaiming_uniform_(torch.empty(r, max_in), a=0, generator=g)
    ref_B = nn.init.kaiming_uniform_(torch.empty(max_out, r), a=0, generator=g)
    torch.testing.assert_close(first.vera_A, ref_A, rtol=0, atol=1e-6)
    torch.testing.assert_close(first.vera_B, ref_B, rtol=0, atol=1e-6)
    for t, fan_in in ((first.vera_A, max_in), (first.vera_B, r)):
        bound = math.sqrt(6 / fan_in)
        assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound

    same, same_adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in,ffn_out", r=r, seed=seed)
    other, other_adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in,ffn_out", r=r, seed=seed + 1)
    same_shared = next(iter(same_adapters.values())).shared
    other_shared = next(iter(other_adapters.values())).shared
    assert torch.equal(same_shared.vera_A, first.vera_A) and torch.equal(same_shared.vera_B, first.vera_B)
    assert not torch.equal(other_shared.vera_A, first.vera_A)
    assert not torch.equal(other_shared.vera_B, first.vera_B)

    # never stored: not in the model's state dict, the adapter state dict or the saved file
    assert not any("vera_" in k for k in model.state_dict())
    assert not any("vera_" in k for k in lora.adapter_state_dict(model, adapters))
    lora.save_adapters(str(tmp_path / "a.safetensors"), model, adapters)
    assert not any("vera_" in k for k in load_file(str(tmp_path / "a.safetensors")))
    assert sum(1 for n, _ in model.named_buffers() if n.endswith(("vera_A", "vera_B"))) == 2  # listed once


def test_projections_equal_peft_vera_for_the_same_seed(tiny_encoder):
    peft_vera = pytest.importorskip("peft.tuners.vera.model")
    r, seed = 16, 5
    _, adapters = vera_model(tiny_encoder, "roberta", "query,value,ffn_in,ffn_out", r=r, seed=seed)
    shared = next(iter(adapters.values())).shared
    g = torch.Generator().manual_seed(seed)
    assert torch.equal(shared.vera_A, peft_vera._kaiming_init((r, 64), generator=g))
    assert torch.equal(shared.vera_B, peft_vera._kaiming_init((64, r), generator=g))


def test_default_rank_is_the_vera_papers_1024(tiny_encoder):
    adapters = inject_vera(tiny_encoder("roberta"), "query,value")
    assert all(a.r == 1024 for a in adapters.values())


# ---------------------------------------------------------------- 3. merge / unmerge

@pytest.mark.parametrize("arch", ARCHS)
def test_merge_unmerge_and_mode_switches(tiny_encoder, tiny_ids, arch):
    model, adapters = vera_model(tiny_encoder, arch, ALL_TARGETS, dropout=0.1)
    randomize_lambdas(adapters)
    model.eval()
    originals = {p: a.base.weight.detach().clone() for p, a in adapters.items()}
    before = logits(model, tiny_ids)
    lora.merge(adapters)
    for p, a in adapters.items():  # W + Lambda_b B Lambda_d A
        A, B = a.shared.vera_A[:, :a.in_features], a.shared.vera_B[:a.out_features]
        dW = torch.diag(a.lambda_b) @ B @ torch.diag(a.lambda_d) @ A
        torch.testing.assert_close(a.base.weight, originals[p] + dW, rtol=0, atol=1e-6)
    assert (logits(model, tiny_ids) - before).abs().max() < 1e-5
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (model.train, model.eval):
        mode()
        assert all(a.merged for a in adapters.values())
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    lora.unmerge(adapters)
    assert not any(a.merged for a in adapters.values())
    assert all((a.base.weight - originals[p]).abs().max() < 1e-6 for p, a in adapters.items())
    assert (logits(model, tiny_ids) - before).abs().max() < 1e-5


# ---------------------------------------------------------------- 4. what trains

@pytest.mark.parametrize("arch", ARCHS)
def test_only_lambdas_and_head_train_and_base_does_not_move(tiny_encoder, tiny_ids, arch):
    model, adapters = vera_model(tiny_encoder, arch, "query,value,ffn_out", dropout=0.1)
    expected = {f"{p}.{n}" for p in adapters for n in ("lambda_d", "lambda_b")}
    expected |= {f"{path}.{n}" for path, m in lora.head_modules(model).items() for n, _ in m.named_parameters()}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    shared = next(iter(adapters.values())).shared
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in expected}
    frozen_AB = (shared.vera_A.clone(), shared.vera_B.clone())
    start = {n: p.detach().clone() for n, p in model.named_parameters() if n in expected}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(3):
        F.cross_entropy(model(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
        opt.step()
        opt.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) and params[n].grad is None for n, v in frozen.items())
    assert torch.equal(shared.vera_A, frozen_AB[0]) and torch.equal(shared.vera_B, frozen_AB[1])
    assert all(not torch.equal(params[n], v) for n, v in start.items())


# ---------------------------------------------------------------- 5. parameter count

def test_parameter_count_roberta_base_query_value_r1024():
    from transformers import RobertaConfig, RobertaForSequenceClassification
    with torch.device("meta"):  # the real architecture, without allocating 125M weights
        model = RobertaForSequenceClassification(RobertaConfig())
    adapters = inject_vera(model, "query,value", r=1024)
    assert len(adapters) == 24
    n_adapter = sum(p.numel() for a in adapters.values() for p in a.adapter_params())
    assert n_adapter == 43_008  # 12 layers x 2 modules x (1024 + 768)
    n_head = sum(p.numel() for p in lora.head_parameters(model))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_adapter + n_head
    shared = next(iter(adapters.values())).shared
    assert shared.vera_A.shape == (1024, 768) and shared.vera_B.shape == (768, 1024)  # buffers, not counted


# ---------------------------------------------------------------- 6. accumulators

@pytest.mark.parametrize("arch", ARCHS)
def test_accumulators_equal_hand_computed_norms(tiny_encoder, tiny_ids, arch):
    model, adapters = vera_model(tiny_encoder, arch, "query,value", dropout=0.1)
    randomize_lambdas(adapters)
    inactive = next(p for p in adapters if "layer.1.attention.self.query" in p)
    adapters[inactive].set_active(False)
    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = True
    outs, grads = outputs_and_grads(adapters, model, tiny_ids)
    assert set(grads) == set(adapters)
    for p, a in adapters.items():
        torch.testing.assert_close(a.fwd_score, outs[p].norm(dim=-1).sum(), rtol=1e-5, atol=0)
        torch.testing.assert_close(a.grad_score, grads[p].norm(dim=-1).sum(), rtol=1e-5, atol=0)
        if p == inactive:
            assert a.param_grad_score == 0 and a.lambda_d.grad is None
        else:
            torch.testing.assert_close(a.param_grad_score, a.lambda_d.grad.norm() + a.lambda_b.grad.norm(),
                                       rtol=1e-5, atol=0)

    for a in adapters.values():
        a.reset_scores()
    model.eval()
    F.cross_entropy(model(input_ids=tiny_ids).logits, torch.tensor([0, 1])).backward()
    model.train()
    with torch.no_grad():
        model(input_ids=tiny_ids)
    assert all(a.fwd_score == 0 and a.grad_score == 0 and a.param_grad_score == 0 for a in adapters.values())


# ---------------------------------------------------------------- 7. inactive adapters

@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_vera_keeps_delta_and_saves_no_activations(tiny_encoder, tiny_ids, arch):
    model, adapters = vera_model(tiny_encoder, arch, "query,value,ffn_out", dropout=0.1)
    randomize_lambdas(adapters)
    model.eval()
    active_logits = logits(model, tiny_ids)
    layer1 = [p for p in adapters if ".layer.1." in p]
    for p in layer1:  # layer 0 stays active, so layer 1 sees inputs that require grad
        adapters[p].set_active(False)
        assert not any(t.requires_grad for t in adapters[p].adapter_params())
    assert torch.equal(logits(model, tiny_ids), active_logits)  # frozen delta still applies

    plain = copy.deepcopy(model)
    for path in layer1:
        parent, _, child = path.rpartition(".")
        setattr(plain.get_submodule(parent), child, plain.get_submodule(path).base)
    assert sum(isinstance(m, VeRALinear) for m in plain.modules()) == len(adapters) - len(layer1)
    model.train()
    plain.train()
    with_inactive, out = saved_activation_bytes(model, input_ids=tiny_ids)
    without, _ = saved_activation_bytes(plain, input_ids=tiny_ids)
    assert with_inactive == without

    F.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    for p, a in adapters.items():
        assert (a.lambda_b.grad is None) == (p in layer1)

    for p in layer1:  # sanity: the counter sees what an active adapter saves
        adapters[p].set_active(True)
    assert saved_activation_bytes(model, input_ids=tiny_ids)[0] > without

    a = adapters[layer1[0]]
    a.set_active(False)
    x = torch.randn(2, 7, a.in_features, requires_grad=True)
    n_adapter, h = saved_activation_bytes(a, x)
    assert h.requires_grad and n_adapter == saved_activation_bytes(a.base, x)[0]


# ---------------------------------------------------------------- 8. save / load

@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_and_mismatch(tiny_encoder, tiny_ids, arch, tmp_path):
    model, adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in", seed=5)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for t in lora.adapter_state_dict(model, adapters).values():
            t.copy_(torch.randn(t.shape, generator=g) * 0.1 if t.is_floating_point()
                    else torch.randint(1, 100, t.shape, generator=g))
    path = str(tmp_path / "vera.safetensors")
    lora.save_adapters(path, model, adapters, metadata={"r": "16", "seed": "5"})
    saved = {k: v.clone() for k, v in lora.adapter_state_dict(model, adapters).items()}
    assert any(k.endswith("lambda_d") for k in saved) and any(k.endswith("n_updates") for k in saved)

    fresh, fresh_adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in", seed=5)
    lora.load_adapters(path, fresh, fresh_adapters)
    loaded = lora.adapter_state_dict(fresh, fresh_adapters)
    assert set(loaded) == set(saved)
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) for k, v in saved.items())
    assert torch.equal(logits(fresh, tiny_ids), logits(model, tiny_ids))

    other_r, other_r_adapters = vera_model(tiny_encoder, arch, "query,value,ffn_in", r=8, seed=5)
    with pytest.raises(ValueError, match="lambda_d has shape"):
        lora.load_adapters(path, other_r, other_r_adapters)
    other_t, other_t_adapters = vera_model(tiny_encoder, arch, "query,value", seed=5)
    with pytest.raises(ValueError, match="does not match the model"):
        lora.load_adapters(path, other_t, other_t_adapters)


# ---------------------------------------------------------------- 9/10. exports

@pytest.mark.parametrize("arch", ARCHS)
def test_export_merged_loads_as_plain_hf_model(tiny_encoder, tiny_ids, arch, tmp_path):
    from transformers import AutoModelForSequenceClassification
    model, adapters = vera_model(tiny_encoder, arch, ALL_TARGETS, num_labels=3)
    randomize_lambdas(adapters)
    model.eval()
    expected = logits(model, tiny_ids)
    assert (expected - logits(tiny_encoder(arch, 3), tiny_ids)).abs().max() > 1e-4
    lora.export_merged(str(tmp_path / "merged"), model, adapters)
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert all(type(m).__module__.startswith(("transformers.", "torch.")) for m in plain.modules())
    assert (logits(plain, tiny_ids) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("targets", ["query,value", ALL_TARGETS])  # all: projections sized by the widest layers
def test_export_peft_loads_with_peft(tiny_encoder, tiny_ids, arch, targets, tmp_path):
    """PEFT alone (no project code) loads the VeRA export and gives the same logits; the projections come from the
    file (save_projection), not from PEFT's generator: a wrong projection_prng_key in the config changes nothing."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification
    base = tiny_encoder(arch, num_labels=3)
    base.save_pretrained(str(tmp_path / "base"))
    model, adapters = vera_model(tiny_encoder, arch, targets, r=16, seed=7, num_labels=3)
    randomize_lambdas(adapters, seed=4)
    with torch.no_grad():
        for p in lora.head_parameters(model):
            p.add_(0.1)
    model.eval()
    expected = logits(model, tiny_ids)
    assert (expected - logits(base, tiny_ids)).abs().max() > 1e-4
    out = tmp_path / "peft"
    vera.export_peft(str(out), model, adapters, base_model_name_or_path=str(tmp_path / "base"))
    saved = load_file(out / "adapter_model.safetensors")
    shared = next(iter(adapters.values())).shared
    assert torch.equal(saved["base_model.vera_A"], shared.vera_A) and torch.equal(saved["base_model.vera_B"], shared.vera_B)
    assert saved["base_model.vera_A"].shape == (16, max(a.in_features for a in adapters.values()))

    def load_and_check():
        fresh = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "base"))
        peft_model = peft.PeftModel.from_pretrained(fresh, str(out)).eval()
        assert sum(isinstance(m, peft.tuners.vera.VeraLayer) for m in peft_model.modules()) == len(adapters)
        assert (logits(peft_model, tiny_ids) - expected).abs().max() < 1e-5
    load_and_check()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["save_projection"] and cfg["projection_prng_key"] == 7
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "projection_prng_key": 12345}))
    load_and_check()


def test_export_peft_refuses_vera(tiny_encoder, tmp_path):
    model, adapters = vera_model(tiny_encoder)
    with pytest.raises(ValueError, match="the PEFT export is for LoRA adapters"):
        lora.export_peft(str(tmp_path / "peft"), model, adapters)
    assert not (tmp_path / "peft").exists()


# ---------------------------------------------------------------- 11. bad input

@pytest.mark.parametrize("r", [0, -2, 2.5])
def test_rank_below_one_or_fractional(tiny_encoder, r):
    model = tiny_encoder("roberta")
    with pytest.raises(ValueError, match="VeRA rank r must be an integer >= 1"):
        inject_vera(model, "query,value", r=r)
    assert not any(isinstance(m, VeRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # refused before anything changed


def test_bad_targets_models_and_double_wrapping(tiny_encoder):
    model = tiny_encoder("bert")
    with pytest.raises(ValueError, match="unknown target module"):
        inject_vera(model, "query,ffn", r=4)
    with pytest.raises(ValueError, match="no nn.Linear in Sequential matches targets"):
        inject_vera(nn.Sequential(nn.Linear(4, 4)), "query", r=4)
    inject_vera(model, "query", r=4)
    with pytest.raises(ValueError, match="refusing to wrap twice"):
        inject_vera(model, "value", r=4)
    with pytest.raises(ValueError, match="refusing to wrap twice"):
        lora.inject(model, "value", LoRALinear)
    lora_model = tiny_encoder("roberta")
    lora.inject(lora_model, "value", LoRALinear)
    with pytest.raises(ValueError, match="refusing to wrap twice"):
        inject_vera(lora_model, "query", r=4)
