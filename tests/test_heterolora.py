"""HeteroLoRA (Zhang et al. 2024): the zero-cost proxies against hand computations, shortcut adapters (an exact
no-op at init, scored and switched like LoRA modules, exported), parameter budgets, and the static and dynamic
searches through train.py. Tiny models, CPU, seeded."""
import copy
import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import allocate
import importance
import lora
import shortcuts
from tiny import glue_dir, run_train, saved_activation_bytes, tiny_model  # noqa: F401 (fixtures)

ARCHS = ["roberta", "bert"]
ALL_SHORTCUTS = "s_res1,s_res2,s_in,s_cut"


# ----------------------------------------------------------------------------- the proxies, by hand

class TwoHeads(nn.Module):
    """logits = mean over positions of fc1(x) + fc2(x), x the token embeddings: small enough for closed forms."""

    def __init__(self, vocab=20, d=6, c=3, r=2, alpha=4.0):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, d)
        self.fc1 = lora.LoRALinear(nn.Linear(d, c), r=r, alpha=alpha)
        self.fc2 = lora.LoRALinear(nn.Linear(d, c), r=r, alpha=alpha)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None):
        x = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        logits = (self.fc1(x) + self.fc2(x)).mean(1)
        return SimpleNamespace(logits=logits, loss=None if labels is None else F.cross_entropy(logits, labels))


def two_heads_batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 20, (4, 5), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(n)]


def hand_grads(net, batch):
    """(grad A, grad B) of each head in closed form: z = sum_i (W_i + s B_i A_i) xbar + b_i, G = dL/dz,
    grad B_i = s G^T (xbar A_i^T), grad A_i = s (G B_i)^T xbar."""
    with torch.no_grad():
        xbar = net.emb.weight[batch["input_ids"]].mean(1)  # (batch, d)
        z = sum(F.linear(xbar, m.base.weight + m.scaling * m.lora_B @ m.lora_A, m.base.bias) for m in (net.fc1, net.fc2))
        G = (z.softmax(-1) - F.one_hot(batch["labels"], 3)) / len(z)  # cross-entropy, mean over the batch
        return [(m.scaling * (G @ m.lora_B).T @ xbar, m.scaling * G.T @ (xbar @ m.lora_A.T)) for m in (net.fc1, net.fc2)]


def stand_in(shape, position):
    """The stand-in B that importance.stand_in_b documents for a module at `position` before any module trained."""
    bound = 1 / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=torch.Generator().manual_seed(position))


def adapters_of(net):
    return {"fc1": net.fc1, "fc2": net.fc2}


def test_param_grad_is_their_grad_norm_by_hand():
    """param_grad on one batch is ||grad A|| + ||grad B||, their grad_norm; over batches, the mean per batch."""
    net, data = TwoHeads(), two_heads_batches(2)
    with torch.no_grad():
        net.fc1.lora_B.normal_()  # fc2 keeps B = 0: its grad A is 0, its grad B is not
    per_batch = [[gA.norm() + gB.norm() for gA, gB in hand_grads(net, b)] for b in data]
    one = importance.probe(net, adapters_of(net), data[:1], "param_grad")
    torch.testing.assert_close(one, torch.stack(per_batch[0]).double(), rtol=1e-5, atol=1e-8)
    two = importance.probe(net, adapters_of(net), data, "param_grad")
    torch.testing.assert_close(two, (torch.stack(per_batch[0]) + torch.stack(per_batch[1])).double() / 2,
                               rtol=1e-5, atol=1e-8)
    assert hand_grads(net, data[0])[1][0].abs().max() == 0 and one[1] > 0  # B = 0: only grad B


def test_snip_by_hand_with_the_stand_in_b_for_a_zero_b():
    net, data = TwoHeads(), two_heads_batches(2)
    trained_b = torch.randn(net.fc1.lora_B.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        net.fc1.lora_B.copy_(trained_b)  # fc2 keeps B = 0
    y = importance.probe(net, adapters_of(net), data, "snip")
    rms = trained_b.double().square().mean().sqrt().item()  # fc1 has trained: fc2's stand-in has fc1's scale
    expected_b2 = torch.empty(net.fc2.lora_B.shape).uniform_(-math.sqrt(3) * rms, math.sqrt(3) * rms,
                                                             generator=torch.Generator().manual_seed(1))
    probe_view = copy.deepcopy(net)
    with torch.no_grad():
        probe_view.fc2.lora_B.copy_(expected_b2)
    per_batch = []
    for b in data:
        grads = hand_grads(probe_view, b)
        per_batch.append([(m.lora_A * gA).abs().sum() + (m.lora_B * gB).abs().sum()
                          for m, (gA, gB) in zip((probe_view.fc1, probe_view.fc2), grads)])
    expected = (torch.stack(per_batch[0]) + torch.stack(per_batch[1])) / 2
    torch.testing.assert_close(y, expected.double(), rtol=1e-5, atol=1e-8)
    assert not net.fc2.lora_B.any() and torch.equal(net.fc1.lora_B, trained_b)  # the stand-in is gone again


def test_snip_and_synflow_are_zero_without_the_stand_in():
    """Why the stand-in: at LoRA's init theta * grad theta vanishes for A (grad A = 0) and for B (B = 0)."""
    net, data = TwoHeads(), two_heads_batches(1)
    for m, (gA, gB) in zip((net.fc1, net.fc2), hand_grads(net, data[0])):
        assert (m.lora_A * gA).abs().sum() == 0 and (m.lora_B * gB).abs().sum() == 0 and gB.abs().sum() > 0
    assert (importance.probe(net, adapters_of(net), data, "snip") > 0).all()


def test_synflow_by_hand():
    """All weights made positive, an all-ones input: R = sum_i 1^T (|W_i| + s |B_i||A_i|) 1 + |b_i| per position
    mean, so the score of head i is sum |B| dR/d|B| + sum |A| dR/d|A| = 2 s 1^T |B_i| |A_i| 1."""
    net, data = TwoHeads(), two_heads_batches(1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    y = importance.probe(net, adapters_of(net), data, "synflow")  # B = 0 in both: stand-ins at LoRA's A bound
    expected = [2 * m.scaling * (stand_in(m.lora_B.shape, i).abs() @ m.lora_A.abs()).sum()
                for i, m in enumerate((net.fc1, net.fc2))]
    torch.testing.assert_close(y, torch.stack(expected).double(), rtol=1e-5, atol=1e-8)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # signs and B = 0 are back
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        net.fc1.lora_B.copy_(torch.randn(net.fc1.lora_B.shape, generator=torch.Generator().manual_seed(3)))
        net.fc2.lora_B.copy_(-net.fc1.lora_B)  # signs do not matter: |theta|
    y = importance.probe(net, adapters_of(net), data, "synflow")  # trained B: no stand-in
    expected = [2 * m.scaling * (m.lora_B.abs() @ m.lora_A.abs()).sum() for m in (net.fc1, net.fc2)]
    torch.testing.assert_close(y, torch.stack(expected).double(), rtol=1e-5, atol=1e-8)


def test_synflow_on_an_encoder_matches_autograd_on_a_positive_copy(tiny_encoder, tiny_ids):
    model = tiny_encoder("roberta")
    adapters = shortcuts.inject(model, "query,value," + ALL_SHORTCUTS, r=2, alpha=4)
    with torch.no_grad():
        for i, a in enumerate(adapters.values()):
            a.lora_B.normal_(generator=torch.Generator().manual_seed(i))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = importance.probe(model, adapters, [{"input_ids": tiny_ids, "labels": torch.tensor([0, 1])}], "synflow")
    positive = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in positive.parameters():
            p.abs_()
    ones = torch.ones(1, tiny_ids.shape[1], 32)
    positive(inputs_embeds=ones, attention_mask=torch.ones(1, tiny_ids.shape[1], dtype=torch.long)).logits.sum().backward()
    pos = dict(positive.named_modules())
    expected = [sum((p * p.grad).abs().sum() for p in pos[n].adapter_params()) for n in adapters]
    torch.testing.assert_close(y, torch.stack(expected).double(), rtol=1e-4, atol=1e-10)
    assert (y > 0).all() and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_set_tracking_for_snip_and_the_proxies_refuse_vera():
    import vera
    net = TwoHeads()
    importance.set_tracking(adapters_of(net), "snip")
    assert all((a.track_forward, a.track_grad, a.track_param_grad, a.track_snip) == (False, False, False, True)
               for a in adapters_of(net).values())
    importance.set_tracking(adapters_of(net), "synflow")  # data-free: training records nothing
    assert not any(a.track_snip or a.track_param_grad for a in adapters_of(net).values())
    from transformers import RobertaConfig, RobertaForSequenceClassification
    enc = RobertaForSequenceClassification(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=64,
                                                         max_position_embeddings=40))
    va = vera.inject_vera(enc, "query,value", r=4)
    with pytest.raises(ValueError, match="VeRA"):
        importance.probe(enc, va, two_heads_batches(1), "snip")


# ----------------------------------------------------------------------------- shortcut adapters

def encoder(tiny_encoder, arch, targets="query,value," + ALL_SHORTCUTS, r=2, dropout=0.0):
    model = tiny_encoder(arch)
    return model, shortcuts.inject(model, targets, r=r, alpha=4, dropout=dropout)


@pytest.mark.parametrize("arch", ARCHS)
def test_shortcuts_start_as_an_exact_no_op(tiny_encoder, tiny_ids, arch):
    plain = tiny_encoder(arch)
    model, adapters = encoder(tiny_encoder, arch)
    kinds = [p.rsplit(".", 1)[1] for p in adapters if isinstance(adapters[p], shortcuts.Shortcut)]
    assert kinds == ["s_res1", "s_res2", "s_in", "s_res1", "s_res2", "s_in", "s_cut"]  # no s_cut into layer 0
    for mode in ("eval", "train"):  # train: the model's dropout draws the same numbers (shortcut dropout is 0)
        getattr(plain, mode)()
        getattr(model, mode)()
        torch.manual_seed(3)
        ref = plain(input_ids=tiny_ids).logits
        torch.manual_seed(3)
        assert torch.equal(model(input_ids=tiny_ids).logits, ref), mode


def test_each_shortcut_is_the_formula_of_its_kind(tiny_encoder, tiny_ids):
    """With B != 0, each kind adds dW times its source to its sum, before the LayerNorm: checked against a layer
    recomputed by hand from the model's own submodules."""
    model, adapters = encoder(tiny_encoder, "bert", ALL_SHORTCUTS)
    with torch.no_grad():
        for i, a in enumerate(adapters.values()):
            a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=torch.Generator().manual_seed(i)))
    layers = model.bert.encoder.layer
    seen = {}
    hooks = [layers[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0])) for i in range(2)]
    out = {}
    hooks += [layers[i].register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o)) for i in range(2)]
    with torch.no_grad():
        model(input_ids=tiny_ids)
    for h in hooks:
        h.remove()
    dW = {p: a.delta_weight() for p, a in adapters.items()}
    prev_a = None
    for i, layer in enumerate(layers):
        x = seen[i]
        get = lambda kind: dW[f"bert.encoder.layer.{i}.{shortcuts.HOMES[kind]}.{kind}"]  # noqa: E731
        with torch.no_grad():
            ctx = layer.attention.self(x)[0]  # no padding: no mask
            s1 = layer.attention.output.dense(ctx) + x + x @ get("s_res1").T
            if i > 0:
                s1 = s1 + prev_a @ get("s_cut").T
            a = layer.attention.output.LayerNorm(s1)
            s2 = layer.output.dense(layer.intermediate(a)) + a + a @ get("s_res2").T + x @ get("s_in").T
            torch.testing.assert_close(layer.output.LayerNorm(s2), out[i], rtol=1e-5, atol=1e-5)
        prev_a = a


def test_shortcuts_are_scored_like_lora_modules(tiny_encoder, tiny_ids):
    model, adapters = encoder(tiny_encoder, "roberta")
    batch = [{"input_ids": tiny_ids, "labels": torch.tensor([0, 1])}]
    cuts = [i for i, a in enumerate(adapters.values()) if isinstance(a, shortcuts.Shortcut)]
    for measure in ("gradient", "param_grad", "snip", "synflow", "forward"):
        y = importance.probe(model, adapters, batch, measure)
        assert y.shape == (len(adapters),) and torch.isfinite(y).all(), measure
        # forward: s_in and s_cut output only dW x, which is 0 at init; every other score is positive
        zero = [i for i in cuts if measure == "forward" and list(adapters)[i].endswith(("s_in", "s_cut"))]
        assert all((y[i] > 0) != (i in zero) for i in range(len(y))), (measure, y)
    # in training, as LoRA modules: the per-pass hooks record active shortcuts only
    importance.set_tracking(adapters, "snip")
    allocate.apply(adapters, [n for n in adapters if n.endswith("s_res2")])
    model.train()
    with torch.no_grad():
        for a in adapters.values():
            a.lora_B.normal_(generator=torch.Generator().manual_seed(0))
    model(input_ids=tiny_ids, labels=torch.tensor([0, 1])).loss.backward()
    assert [bool(a.snip_count) for a in adapters.values()] == [n.endswith("s_res2") for n in adapters]


def test_shortcuts_are_activated_and_trained_like_lora_modules(tiny_encoder, tiny_ids):
    model, adapters = encoder(tiny_encoder, "roberta")
    names = list(adapters)
    chosen = [n for n in names if n.endswith(("s_in", "s_cut", "query"))]
    allocate.apply(adapters, chosen)
    assert [p.requires_grad for n in names for p in adapters[n].adapter_params()] == \
        [n in chosen for n in names for _ in range(2)]
    opt, _ = allocate.build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-2, total_steps=4)
    before = {n: adapters[n].lora_B.clone() for n in names}
    model.train()
    for _ in range(2):
        model(input_ids=tiny_ids, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = [not torch.equal(before[n], adapters[n].lora_B) for n in names]
    assert moved == [n in chosen for n in names]


@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_shortcuts_save_no_activations(tiny_encoder, tiny_ids, arch):
    plain, lora_only = encoder(tiny_encoder, arch, "query,value", dropout=0.1)
    model, adapters = encoder(tiny_encoder, arch, "query,value," + ALL_SHORTCUTS, dropout=0.1)
    for n, a in adapters.items():
        a.set_active(not isinstance(a, shortcuts.Shortcut))
    plain.train()
    model.train()
    without, _ = saved_activation_bytes(plain, input_ids=tiny_ids)
    with_inactive, out = saved_activation_bytes(model, input_ids=tiny_ids)
    assert out.logits.requires_grad and with_inactive == without
    adapters[next(n for n in adapters if n.endswith("s_in"))].set_active(True)
    assert saved_activation_bytes(model, input_ids=tiny_ids)[0] > without  # the counter sees an active one


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_export_with_shortcuts_reproduces_the_model(tiny_encoder, tiny_ids, arch, tmp_path):
    model, adapters = encoder(tiny_encoder, arch, "query,ffn_out," + ALL_SHORTCUTS)
    with torch.no_grad():
        for i, a in enumerate(adapters.values()):
            a.lora_B.copy_(0.3 * torch.randn(a.lora_B.shape, generator=torch.Generator().manual_seed(i)))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=tiny_ids).logits
    for refuse in (lambda: lora.export_merged(str(tmp_path / "x"), model, adapters), lambda: lora.merge(adapters),
                   lambda: lora.export_peft(str(tmp_path / "y"), model, adapters)):
        with pytest.raises(ValueError, match="shortcut adapter, which plain weights cannot hold"):
            refuse()
    paths = shortcuts.export_merged(str(tmp_path / "merged"), model, adapters)
    assert paths == [p for p, a in adapters.items() if isinstance(a, shortcuts.Shortcut)]
    loaded, cuts = shortcuts.load_merged(str(tmp_path / "merged"))
    assert list(cuts) == paths and not any(isinstance(m, lora.LoRALinear) and not isinstance(m, shortcuts.Shortcut)
                                           for m in loaded.modules())  # the LoRA modules are plain weights now
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=tiny_ids).logits, expected, rtol=1e-5, atol=1e-5)
        plain_only = type(loaded).from_pretrained(str(tmp_path / "merged")).eval()(input_ids=tiny_ids).logits
    assert (plain_only - expected).abs().max() > 1e-3  # without its shortcuts the plain model is another model


def test_shortcut_targets_refuse_other_layouts(tiny_encoder):
    from transformers import GPT2Config, GPT2ForSequenceClassification
    gpt = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, pad_token_id=0))
    with pytest.raises(ValueError, match="BERT/RoBERTa-style post-LN encoder"):
        shortcuts.inject(gpt, "s_res1")
    assert not any(p.requires_grad is False for p in gpt.parameters())  # refused before any change
    model, adapters = encoder(tiny_encoder, "roberta", "s_res1,s_in")  # shortcuts alone: frozen base, head trains
    assert len(adapters) == 4 and all(isinstance(a, shortcuts.Shortcut) for a in adapters.values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {f"{n}.{w}" for n in adapters for w in ("lora_A", "lora_B")} | {n for n, _ in model.classifier.named_parameters(
            prefix="classifier")}
    with pytest.raises(ValueError, match="twice"):
        shortcuts.inject(model, "s_res2")


# ----------------------------------------------------------------------------- parameter budgets, static search

@pytest.mark.parametrize("allocator", list(allocate.ORDERS))
def test_a_parameter_budget_is_never_exceeded(allocator):
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        m = int(torch.randint(2, 12, (1,), generator=g))
        sizes = torch.randint(1, 50, (m,), generator=g).tolist()
        budget = int(torch.randint(min(sizes), sum(sizes) + 10, (1,), generator=g))
        scores = torch.rand(m, generator=g) * (torch.rand(m, generator=g) > 0.3)
        counts = torch.randint(0, 5, (m,), generator=g)
        chosen = allocate.by_params(allocate.ORDERS[allocator](scores, g, counts), sizes, budget)
        used = sum(sizes[i] for i in chosen)
        assert chosen and used <= budget, (trial, sizes, budget, chosen)
        assert all(used + sizes[i] > budget for i in set(range(m)) - set(chosen))  # nothing left out would fit
    # top-k under a budget: by score, skipping what does not fit
    assert allocate.by_params(allocate.ORDERS["topk"](torch.tensor([4.0, 3.0, 2.0, 1.0]), None, None),
                              [5, 6, 2, 3], 10) == [0, 2, 3]


def linears(ins, r=2, out=4):
    """{name: LoRALinear} of these input sizes: r * (in + out) adapter parameters each."""
    torch.manual_seed(0)
    return {f"m{i}": lora.LoRALinear(nn.Linear(d, out), r=r) for i, d in enumerate(ins)}


@pytest.mark.parametrize("allocator", list(allocate.ORDERS))
def test_allocation_keeps_the_parameter_budget_at_every_step(allocator):
    adapters = linears([1, 16, 1, 6, 11, 1])
    sizes = [sum(p.numel() for p in a.adapter_params()) for a in adapters.values()]
    assert sizes == [10, 40, 10, 20, 30, 10]
    alloc = allocate.Allocation(list(adapters), allocator, None, measure="random" if allocator == "uniform" else
                                "forward", period=1, param_budget=45, sizes=sizes, seed=1)
    g = torch.Generator().manual_seed(2)
    alloc.initial(adapters, None)  # uniform at random, within the budget
    for step in range(1, 20):
        for a in adapters.values():  # a fresh forward score for every module
            a.fwd_score.fill_(float(torch.rand((), generator=g)))
            a.fwd_count.fill_(1.0)
        alloc.step(step, adapters)
    assert len(alloc.history) == 20 and len({tuple(act) for _, act in alloc.history}) > 1
    for _, active in alloc.history:
        assert 0 < sum(sizes[int(n[1:])] for n in active) <= 45


def test_bad_parameter_budgets_raise():
    names, sizes = ["a", "b"], [10, 20]
    with pytest.raises(ValueError, match="smallest module's 10"):
        allocate.Allocation(names, "topk", None, param_budget=9, sizes=sizes)
    with pytest.raises(ValueError, match="replaces k"):
        allocate.Allocation(names, "threshold", None, param_budget=30, sizes=sizes)
    with pytest.raises(ValueError, match="one per module"):
        allocate.Allocation(names, "topk", None, param_budget=30, sizes=[10])


def test_static_schedule_never_reallocates():
    adapters = linears([3, 3, 3, 3])
    alloc = allocate.Allocation(list(adapters), "topk", 2, measure="snip", schedule="static", period=1)
    assert alloc.initial(adapters, torch.tensor([1.0, 4.0, 3.0, 2.0])) == ["m1", "m2"]
    assert not any(alloc.due(s) for s in range(1, 1000))
    for a in adapters.values():
        a.snip_score.fill_(float(a is adapters["m0"]) * 100)  # whatever the scores become
        a.snip_count.fill_(1.0)
    assert all(alloc.step(s, adapters) is None for s in range(1, 50))
    assert alloc.history == [(0, ["m1", "m2"])] and [a.active for a in adapters.values()] == [False, True, True, False]
    assert [int(a.n_updates) for a in adapters.values()] == [0, 49, 49, 0]


# ----------------------------------------------------------------------------- train.py, end to end

FAST = ["--batch-size", 8, "--max-len", 24, "--log-every", 2, "--probe-batches", 2, "--eval-batch-size", 16,
        "--rank", 2, "--max-steps", 8, "--save-every", 8, "--eval-every", 8]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_dynamic_heterolora_with_shortcuts_under_a_parameter_budget(tmp_path, tiny_model, glue_dir):
    """Mixed module sizes (ffn_in is 3x a query), re-scored with snip every 1/2 epoch (48 examples, batch 8:
    6 steps an epoch, so every 3 steps); the budget holds at every allocation, no module is locked out, the
    heatmap covers the shortcut kinds and the merged export with its shortcuts gives the run's final metric."""
    out = tmp_path / "run"
    run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--targets",
              "query,value,ffn_in," + ALL_SHORTCUTS, "--param-budget", 700, "--importance", "snip",
              "--allocator", "topk", "--period-epochs", 0.5, "--window", "since_last", "--output-dir", out, *FAST)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    config = ckpt["alloc"]["config"]
    sizes = dict(zip(config["names"], config["sizes"]))
    assert config["period"] == 3 and config["param_budget"] == 700 and len(sizes) == 13
    assert sizes["roberta.encoder.layer.0.intermediate.dense"] == 2 * (32 + 64) and \
        sizes["roberta.encoder.layer.1.attention.output.s_cut"] == 2 * (32 + 32)
    allocs = [m for m in read_jsonl(out / "metrics.jsonl") if "active" in m]
    assert [a["step"] for a in allocs] == [0, 3, 6]
    for a in allocs:
        used = sum(sizes[n] for n in a["active"])
        assert used <= 700 and all(used + sizes[n] > 700 for n in set(sizes) - set(a["active"]))
        assert min(a["scores"]) > 0, a  # every module scored, trained or not
    with open(out / "selection.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["layer", "query", "value", "ffn_in", "s_res1", "s_res2", "s_in", "s_cut"]
    assert rows[1][-1] == "nan" and rows[2][-1] != "nan"  # no s_cut into layer 0
    res = json.loads((out / "results.json").read_text())
    assert res["active_trainable_params"] - (32 * 32 + 32 + 32 * 2 + 2) <= 700  # head: dense and out_proj
    import glue
    from transformers import AutoTokenizer
    model, cuts = shortcuts.load_merged(str(out / "merged"))
    tok = AutoTokenizer.from_pretrained(str(out / "merged"))
    from transformers import DataCollatorWithPadding
    dev = glue.encode(tok, glue.load_split("rte", "dev", glue_dir), 24)
    batch = DataCollatorWithPadding(tok)(dev)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    acc = glue.compute_metrics("rte", logits.argmax(-1).numpy(), [ex["label"] for ex in dev])["accuracy"]
    assert len(cuts) == 7 and acc == pytest.approx(res["final"])
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_static_heterolora_allocates_once_before_step_0(tmp_path, tiny_model, glue_dir, measure="synflow"):
    out = tmp_path / "run"
    run_train("--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, "--targets", "query,value,s_res2",
              "--param-budget", 3 * 128, "--importance", measure, "--allocator", "topk", "--schedule", "static",
              "--output-dir", out, *FAST)
    allocs = [m for m in read_jsonl(out / "metrics.jsonl") if "active" in m]
    assert [a["step"] for a in allocs] == [0] and len(allocs[0]["active"]) == 3 and min(allocs[0]["scores"]) > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["alloc"]["history"] == [(0, allocs[0]["active"])] and ckpt["alloc"]["active"] == allocs[0]["active"]
    for name in ckpt["alloc"]["config"]["names"]:  # the chosen trained all 8 steps, the others never
        trained = ckpt["model"][f"{name}.lora_B"].abs().sum() > 0
        assert trained == (name in allocs[0]["active"]) and int(ckpt["model"][f"{name}.n_updates"]) == 8 * trained
        assert ckpt["model"][f"{name}.{importance.MEASURES[measure]}_count"] == 0  # nothing measured after step 0


def test_heterolora_bad_input_gives_one_clear_line(tmp_path, tiny_model, glue_dir):
    base = ["--task", "rte", "--model", tiny_model, "--data-dir", glue_dir, *FAST]
    cases = [(["--param-budget", 10], "smallest module's 128"),
             (["--param-budget", 500, "--active", 2], "three budgets"),
             (["--method", "vera", "--targets", "query,s_in"], "need --method lora")]
    for i, (flags, message) in enumerate(cases):
        proc = run_train(*base, *flags, "--output-dir", tmp_path / str(i), check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in lines[-1], proc.stderr[-500:]


def test_figure_titles_name_heterolora_runs_by_their_parameter_budget():
    import figures
    base = dict(task="mrpc", method="lora", importance="snip", allocator="topk", active=None, threshold=None)
    assert figures.describe(base) == "mrpc, LoRA"
    assert figures.describe({**base, "param_budget": 73728, "schedule": "static"}) == \
        "mrpc, DynaLoRA 73,728 params (snip, topk, static)"
    assert figures.describe({**base, "param_budget": 73728, "schedule": "periodic"}) == \
        "mrpc, DynaLoRA 73,728 params (snip, topk)"
    assert figures.describe({**base, "active": 8}, n_modules=12) == "mrpc, DynaLoRA 8 of 12 (snip, topk)"
