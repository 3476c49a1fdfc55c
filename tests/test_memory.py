"""Tests for memory.py: the depth cost model equals an independent saved_tensors_hooks accounting of real
training steps (forward, backward, AdamW step) at every depth, bounds every allocation within its depth, leaves
the model as it found it; depth_for_budget picks the deepest fitting depth and refuses impossible budgets
with one line. Tiny random RoBERTa/BERT, CPU, seeded."""
import random

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

import allocate
import lora
import memory
import vera
from tiny import saved_activation_bytes


def tiny(arch="roberta", method="lora", targets="query,value", dropout=0.0, layers=3):
    config_cls, model_cls = {"roberta": (RobertaConfig, RobertaForSequenceClassification),
                             "bert": (BertConfig, BertForSequenceClassification)}[arch]
    torch.manual_seed(0)
    model = model_cls(config_cls(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=40, num_labels=2))
    if method == "lora":
        adapters = lora.inject(model, targets, lambda lin: lora.LoRALinear(lin, r=4, alpha=8, dropout=dropout))
    else:
        adapters = vera.inject_vera(model, targets, r=16, dropout=dropout)
    return model, adapters


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding, as in a real batch
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


def measured_step(model, b):
    """One real training step of the current active set, counted independently of memory.py:
    (saved for backward via tests/tiny.py's hook, bytes of every .grad, bytes of every AdamW state tensor)."""
    model.train()
    saved, out = saved_activation_bytes(model, **b)
    out.loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trained)
    opt = torch.optim.AdamW(trained, lr=1e-3)
    opt.step()
    optim = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values())
    model.zero_grad(set_to_none=True)
    return saved, grads, optim


CASES = [("roberta", "lora", "query,value", 0.0), ("roberta", "lora", "all", 0.1), ("bert", "lora", "all", 0.0),
         ("roberta", "vera", "query,value", 0.1)]


@pytest.mark.parametrize("arch,method,targets,dropout", CASES)
def test_cost_model_equals_saved_tensors_hooks_accounting_at_every_depth(arch, method, targets, dropout):
    model, adapters = tiny(arch, method, targets, dropout)
    names, b = list(adapters), batch()
    costs = memory.depth_costs(model, adapters, b, lora.head_parameters(model))
    assert [c["depth"] for c in costs] == [0, 1, 2, 3]
    for c in costs:
        allocate.apply(adapters, allocate.top_layers(names, c["depth"]))
        assert measured_step(model, b) == (c["saved"], c["grads"], c["optim"]), c
        assert c["total"] == c["saved"] + c["grads"] + c["optim"]
    saved = [c["saved"] for c in costs]
    assert saved == sorted(saved) and len(set(saved)) == len(saved)  # each layer more costs more
    assert costs[0]["grads"] == memory.gradient_bytes(lora.head_parameters(model))  # depth 0: the head alone


@pytest.mark.parametrize("arch,method,targets,dropout", CASES[:2])
def test_cost_at_an_allocations_depth_bounds_its_measured_memory(arch, method, targets, dropout):
    model, adapters = tiny(arch, method, targets, dropout)
    names, b = list(adapters), batch()
    costs = memory.depth_costs(model, adapters, b, lora.head_parameters(model))
    rng = random.Random(0)
    for _ in range(6):
        active = rng.sample(names, rng.randint(1, len(names)))
        allocate.apply(adapters, active)
        c = costs[allocate.depth(active, names)]
        saved, grads, optim = measured_step(model, b)
        assert saved <= c["saved"] and grads <= c["grads"] and optim <= c["optim"], (active, c)


def test_depth_costs_leaves_the_model_as_it_was():
    model, adapters = tiny(dropout=0.1)
    names = list(adapters)
    allocate.apply(adapters, names[1:3])
    for a in adapters.values():
        a.track_grad = True
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    memory.depth_costs(model, adapters, batch(), lora.head_parameters(model))
    assert allocate.active_names(adapters) == names[1:3] and not model.training
    assert all(a.track_grad and not a.track_forward and not a.track_param_grad for a in adapters.values())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws left no trace
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no score accumulated


def test_depth_costs_needs_labels():
    model, adapters = tiny()
    b = {k: v for k, v in batch().items() if k != "labels"}
    with pytest.raises(ValueError, match="labels"):
        memory.depth_costs(model, adapters, b, lora.head_parameters(model))
    assert allocate.active_names(adapters) == list(adapters)


def test_bench_accounting_counts_each_storage_once():
    x = torch.zeros(10)
    assert memory.storage_bytes([x, x[2:5], x.view(2, 5)]) == 40
    assert memory.storage_bytes([x, torch.zeros(3, dtype=torch.float64)]) == 64
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(5))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.ones(5)
    opt.step()
    assert memory.optimizer_bytes(opt) == memory.adamw_state_bytes(opt.param_groups[0]["params"]) == 2 * 20 + 4


def costs_of(totals):
    return [dict(depth=d, saved=t, grads=0, optim=0, total=t) for d, t in enumerate(totals)]


def test_depth_for_budget_takes_the_deepest_depth_that_fits():
    costs = costs_of([5, 30, 55, 80, 100])
    assert memory.depth_for_budget(costs, 1.0) == 4
    assert memory.depth_for_budget(costs, 0.8) == 3
    assert memory.depth_for_budget(costs, 0.79) == 2
    assert memory.depth_for_budget(costs, 0.3) == 1
    # every depth up to the answer must fit, so that every allocation within it does
    assert memory.depth_for_budget(costs_of([5, 30, 90, 60, 100]), 0.8) == 1


@pytest.mark.parametrize("fraction,what", [(0.01, "the head alone"), (0.2, "the top layer")])
def test_depth_for_budget_refuses_what_no_allocation_meets_in_one_line(fraction, what):
    with pytest.raises(ValueError) as e:
        memory.depth_for_budget(costs_of([5, 30, 55, 100]), fraction)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_cost_model_keeps_no_graph_alive():
    """depth_costs runs forwards with no backward: every graph it builds (and every activation it saved) is freed
    when it returns. A pack hook that returned the tensor itself kept them all alive (a node -> saved output ->
    grad_fn -> node cycle that only backward breaks): at RoBERTa-base scale, gigabytes per depth."""
    import gc
    model, adapters = tiny(layers=3)

    def live_graph_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.grad_fn is not None)

    before = live_graph_tensors()
    costs = memory.depth_costs(model, adapters, batch(), lora.head_parameters(model))
    assert costs[-1]["saved"] > 0
    assert live_graph_tensors() == before
