"""Tests for allocate.py: allocators exact (topk, threshold) or within 5 binomial standard deviations
(multinomial, uniform, discounted), schedules, the active set, the global and local optimizers (a module
chosen late trains; inactive modules stay bitwise unchanged; local = AdamW when all are active), no host
reads from scoring inside a training step, checkpoint round trips and every bad input. Tiny random RoBERTa,
CPU, seeded."""
import contextlib
import copy
import io
import itertools

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

import allocate
import importance
import lora
from allocate import Allocation, build_optimizer
from lora import LoRALinear


def tiny_model(seed=0, layers=2, targets="query,value"):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = RobertaForSequenceClassification(cfg)
    return model, lora.inject(model, targets, lambda lin: lora.LoRALinear(lin, r=4, alpha=8))


def batches(n, seed=1, bs=3, seq=7):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 100, (bs, seq), generator=g),
             "labels": torch.randint(0, 2, (bs,), generator=g)} for _ in range(n)]


def train_step(model, optimizer, scheduler, batch):
    model(**batch).loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def within_5_sigma(freq, prob, n):
    """Each observed frequency within 5 binomial standard deviations sqrt(p(1-p)/n) of its probability."""
    sd = (prob * (1 - prob) / n).sqrt()
    return bool(((freq - prob).abs() <= 5 * sd + 1e-12).all())


def draw_frequencies(allocator, scores, k, n, counts=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    hits = torch.zeros(len(scores), dtype=torch.float64)
    for _ in range(n):
        hits[allocator(scores, k, g, counts)] += 1
    return hits / n


# ----------------------------------------------------------------------------- allocators

def test_topk_exact_and_ties_go_to_the_lower_index():
    s = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.9])
    assert allocate.topk(s, 3) == [1, 2, 4]
    assert allocate.topk(s, 2) == [1, 4]
    assert allocate.topk(s, 1) == [4]
    assert allocate.topk(s, 5) == [0, 1, 2, 3, 4]
    assert allocate.topk(torch.ones(4), 2) == [0, 1]


def test_threshold_exact():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])  # shares 0.1, 0.2, 0.3, 0.4 (eq. 2)
    assert allocate.threshold(s, 0.4) == [3]
    assert allocate.threshold(s, 0.5) == [2, 3]
    assert allocate.threshold(s, 0.7) == [2, 3]  # 0.4 + 0.3 reaches 0.7 exactly
    assert allocate.threshold(s, 0.71) == [1, 2, 3]
    assert allocate.threshold(s, 1.0) == [0, 1, 2, 3]
    assert allocate.threshold(s, 1e-9) == [3]  # at least one
    assert allocate.threshold(torch.tensor([0.0, 5.0, 5.0, 0.0]), 1.0) == [1, 2]  # smallest set: zeros not needed
    assert allocate.threshold(torch.zeros(4), 0.5) == [0, 1]  # nothing measured: uniform shares


def test_multinomial_single_draw_frequencies_match_probabilities():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    n = 4000
    assert within_5_sigma(draw_frequencies(allocate.multinomial, s, 1, n), s.double() / s.sum(), n)


def test_multinomial_without_replacement_matches_successive_sampling():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = (s / s.sum()).double()
    # inclusion probability of i in k=2 draws without replacement: P(i first) + sum_j P(j first) P(i | j removed)
    pi = torch.tensor([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)])
    n = 4000
    freq = draw_frequencies(allocate.multinomial, s, 2, n)
    assert within_5_sigma(freq, pi, n)
    assert abs(freq.sum().item() - 2) < 1e-9  # exactly k distinct modules every draw


def test_uniform_gives_each_module_k_over_m():
    n, m, k = 3000, 6, 2
    freq = draw_frequencies(allocate.uniform, torch.tensor([9.0, 0, 0, 0, 0, 1]), k, n)  # scores are ignored
    assert within_5_sigma(freq, torch.full((m,), k / m, dtype=torch.float64), n)


def test_discounted_single_draw_matches_eq3():
    s, c = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 1, 5, 9])
    w = (s / s.sum()) / (1 + c)  # eq. 2 then eq. 3
    n = 4000
    assert within_5_sigma(draw_frequencies(allocate.discounted, s, 1, n, counts=c), (w / w.sum()).double(), n)


def test_discounted_spreads_selections_more_evenly_than_multinomial():
    s = torch.tensor([50.0, 20.0, 10.0, 5.0, 2.0, 1.0])  # skewed, as dense layers' forward norms (sec. 3.2)

    def selections(allocator):
        g, counts, hits = torch.Generator().manual_seed(0), torch.zeros(6, dtype=torch.long), torch.zeros(6)
        for _ in range(300):
            idx = allocator(s, 2, g, counts)
            hits[idx] += 1
            counts[idx] += 10  # as in training: each chosen module gets `period` updates
        return hits / hits.sum()

    plain, disc = selections(allocate.multinomial), selections(allocate.discounted)
    # seeded, observed: std 0.107 vs 0.163, rarest module 0.055 vs 0.023 (in the long run the discounted
    # frequencies go as sqrt(score) instead of score)
    assert disc.std() < 0.8 * plain.std()
    assert disc.min() > 1.8 * plain.min()


def test_too_few_positive_scores_fill_uniformly_from_the_rest():
    g = torch.Generator().manual_seed(0)
    picks = [allocate.multinomial(torch.tensor([0.0, 0.0, 5.0, 0.0]), 2, g) for _ in range(200)]
    assert all(2 in p and len(p) == 2 for p in picks)
    assert {i for p in picks for i in p} == {0, 1, 2, 3}


def test_stochastic_allocators_reproduce_with_the_same_seed():
    s, c = torch.rand(8, generator=torch.Generator().manual_seed(3)), torch.arange(8)
    for name in ("multinomial", "discounted", "uniform"):
        runs = [[allocate.ALLOCATORS[name](s, 3, g, c) for _ in range(5)]
                for g in (torch.Generator().manual_seed(7), torch.Generator().manual_seed(7))]
        assert runs[0] == runs[1]


# ----------------------------------------------------------------------------- schedules and the active set

def test_schedules_fire_at_exactly_the_right_steps():
    assert [t for t in range(0, 21) if allocate.due("periodic", t, period=5)] == [5, 10, 15, 20]
    assert [t for t in range(0, 21) if allocate.due("periodic", t, period=1)] == list(range(1, 21))
    assert [t for t in range(0, 21) if allocate.due("once", t, realloc_at=7)] == [7]


def test_apply_makes_exactly_the_chosen_modules_require_grad():
    model, adapters = tiny_model()
    names = list(adapters)
    allocate.apply(adapters, [names[1], names[3]])
    assert allocate.active_names(adapters) == [names[1], names[3]]
    for name, a in adapters.items():
        assert a.active == (name in (names[1], names[3]))
        assert all(p.requires_grad == a.active for p in a.adapter_params())
    assert all(p.requires_grad for p in lora.head_parameters(model))
    assert not any(p.requires_grad for a in adapters.values() for p in a.base.parameters())


def test_allocation_counts_updates_and_records_history():
    model, adapters = tiny_model()
    importance.set_tracking(adapters, "forward")
    alloc = Allocation(adapters, "discounted", 2, measure="forward", schedule="periodic", period=2, seed=1)
    opt, sched = build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-2, total_steps=6)
    assert alloc.initial(adapters) == alloc.active and len(alloc.active) == 2
    returned = []
    for step, b in enumerate(batches(6)):
        train_step(model, opt, sched, b)
        returned.append(alloc.step(step + 1, adapters))
    assert [s for s, _ in alloc.history] == [0, 2, 4, 6]
    assert [r is not None for r in returned] == [False, True, False, True, False, True]
    assert allocate.active_names(adapters) == alloc.active == alloc.history[-1][1]
    # n_updates (C in eq. 3) = optimizer steps each module was active for, as the history says
    fractions = allocate.selection_fractions(alloc.history, list(adapters), 6)
    assert [a.n_updates.item() for a in adapters.values()] == [round(6 * f) for f in fractions.values()]


def test_initial_allocation_uniform_or_from_probe_scores():
    model, adapters = tiny_model()
    alloc = Allocation(adapters, "threshold", 0.6, measure="forward")
    assert len(alloc.initial(adapters, None)) == 3  # uniform shares 0.25: 3 modules reach 0.6
    alloc = Allocation(adapters, "topk", 1, measure="forward")
    assert alloc.initial(adapters, torch.tensor([1.0, 9.0, 3.0, 2.0])) == [list(adapters)[1]]
    assert alloc.history == [(0, [list(adapters)[1]])]


@pytest.mark.parametrize("window", importance.WINDOWS)
def test_window_since_last_resets_scores_at_reallocation(window):
    model, adapters = tiny_model()
    importance.set_tracking(adapters, "forward")
    alloc = Allocation(adapters, "topk", 2, measure="forward", schedule="once", realloc_at=1, window=window)
    opt, sched = build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-2, total_steps=4)
    alloc.initial(adapters)
    train_step(model, opt, sched, batches(1)[0])
    alloc.step(1, adapters)
    assert all((a.fwd_score == 0) == (window == "since_last") for a in adapters.values())


def test_selection_fractions():
    hist = [(0, ["a", "b"]), (4, ["b", "c"])]
    assert allocate.selection_fractions(hist, ["a", "b", "c", "d"], 10) == {"a": 0.4, "b": 1.0, "c": 0.6, "d": 0.0}


@pytest.mark.parametrize("window", importance.WINDOWS)
@pytest.mark.parametrize("measure", ["forward", "gradient", "param_grad"])
def test_no_module_is_locked_out_by_its_score(measure, window):
    """10 re-allocations, 2 of 6 modules active, every allocator: at every allocation every module has a
    non-zero score. Training alone measures adapter gradients only for active modules, and output gradients
    only down to the lowest active one; the probe before each re-allocation (as train.py runs it) measures all."""
    for allocator in allocate.ALLOCATORS:
        budget = 0.3 if allocator == "threshold" else 2
        model, adapters = tiny_model(layers=3)
        importance.set_tracking(adapters, measure)
        alloc = Allocation(adapters, allocator, budget, measure=measure, period=1, window=window, seed=1)
        opt, sched = build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-2, total_steps=11)
        data = batches(12, seq=5)
        alloc.initial(adapters, importance.probe(model, adapters, data[:1], measure))
        seen = [alloc.scores]
        for t in range(10):
            train_step(model, opt, sched, data[t])
            if alloc.due(t + 1) and measure in importance.PARTIAL:
                importance.probe(model, adapters, [data[t + 1]], measure, keep=True)
            if alloc.step(t + 1, adapters) is not None:
                seen.append(alloc.scores)
        assert len(seen) == 11
        assert all(min(s) > 0 for s in seen), (allocator, [[round(x, 4) for x in s] for s in seen])


# ----------------------------------------------------------------------------- depth budget

def test_layers_top_layers_and_depth():
    names = [f"roberta.encoder.layer.{i}.attention.self.{t}" for i in range(3) for t in ("query", "value")]
    assert [allocate.layer_of(n) for n in names] == [0, 0, 1, 1, 2, 2]
    assert allocate.layer_of("model.layers.11.self_attn.q_proj") == 11  # decoder naming
    assert allocate.top_layers(names, 0) == [] and allocate.top_layers(names, 3) == names
    assert allocate.top_layers(names, 2) == names[2:]
    assert allocate.depth([], names) == 0 and allocate.depth([names[5]], names) == 1
    assert allocate.depth([names[5], names[2]], names) == 2 and allocate.depth(names[:1], names) == 3
    assert [allocate.min_depth(names, k) for k in range(1, 7)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="cannot tell the layer"):
        allocate.layer_of("classifier.dense")


DEPTH_CASES = [(a, m) for a in allocate.ALLOCATORS for m in ("forward", "gradient", "param_grad", "random")
               if not (m == "random" and a in ("topk", "threshold"))]


@pytest.mark.parametrize("allocator,measure", DEPTH_CASES)
def test_every_allocator_meets_the_depth_budget_at_every_allocation(allocator, measure):
    """Every allocator and importance measure, 4 re-allocations on a 3-layer model, the top 2 layers eligible:
    at every allocation the active set lies in them, has the budget's size, and the modules below the floor
    never get a gradient, an update or optimizer state. The probe (as train.py runs it) activates only the
    eligible modules, so the gradient measures leave the modules below the floor unmeasured."""
    model, adapters = tiny_model(layers=3)
    names = list(adapters)
    eligible, below = allocate.top_layers(names, 2), allocate.top_layers(names, 3)[:2]
    budget = 0.3 if allocator == "threshold" else 3
    importance.set_tracking(adapters, measure)
    alloc = Allocation(names, allocator, budget, measure=measure, period=1, seed=1, eligible=eligible)
    opt, sched = build_optimizer("global", adapters, lora.head_parameters(model), lr=1e-2, total_steps=5)
    data = batches(6, seq=5)
    chosen = [alloc.initial(adapters, importance.probe(model, adapters, data[:1], measure, only=eligible))]
    for t in range(4):
        train_step(model, opt, sched, data[t])
        if alloc.due(t + 1) and measure in importance.PARTIAL:
            importance.probe(model, adapters, [data[t + 1]], measure, keep=True, only=eligible)
        chosen.append(alloc.step(t + 1, adapters))
        if measure in importance.PARTIAL:
            count = "grad_count" if measure == "gradient" else "param_grad_count"
            assert all(getattr(adapters[n], count) == 0 for n in below)  # backward stopped at the floor
            assert all(getattr(adapters[n], count) > 0 for n in eligible)  # every eligible module measured
    assert len(chosen) == 5 and all(c is not None for c in chosen)
    for active in chosen:
        assert set(active) <= set(eligible) and allocate.depth(active, names) <= 2
        assert len(active) == 3 if allocator != "threshold" else 1 <= len(active) <= 4
    for n in below:
        a = adapters[n]
        assert not a.active and a.n_updates == 0 and all(p not in opt.state for p in a.adapter_params())


def test_eligible_set_bad_input_and_checkpoint():
    _, adapters = tiny_model(layers=3)
    names = list(adapters)
    with pytest.raises(ValueError, match="k must be an integer from 1 to the number of modules \\(2\\)"):
        Allocation(names, "topk", 3, eligible=names[-2:])  # k counts against the eligible modules
    with pytest.raises(ValueError, match="non-empty subset"):
        Allocation(names, "topk", 1, eligible=["nope"])
    with pytest.raises(ValueError, match="non-empty subset"):
        Allocation(names, "topk", 1, eligible=[])
    assert Allocation(names, "topk", 1, eligible=names).config()["eligible"] is None  # all eligible: no floor
    sd = Allocation(names, "discounted", 2, eligible=names[-2:]).state_dict()
    with pytest.raises(ValueError, match="differs from this run's in eligible"):
        Allocation(names, "discounted", 2, eligible=names[-4:]).load_state_dict(sd, adapters)


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("kind", allocate.OPTIMIZERS)
def test_module_inactive_at_build_and_chosen_later_is_trained(kind):
    model, adapters = tiny_model()
    names = list(adapters)
    allocate.apply(adapters, [names[0]])
    opt, sched = build_optimizer(kind, adapters, lora.head_parameters(model), lr=1e-2, weight_decay=0.1,
                                 total_steps=10)
    data = batches(4)
    for b in data[:2]:
        train_step(model, opt, sched, b)
    late = adapters[names[3]]
    assert torch.equal(late.lora_B, torch.zeros_like(late.lora_B))
    allocate.apply(adapters, [names[3]])
    for b in data[2:]:
        before, first = late.lora_B.clone(), adapters[names[0]].lora_B.clone()
        train_step(model, opt, sched, b)
        assert not torch.equal(late.lora_B, before)  # trained from the moment it is chosen
        assert torch.equal(adapters[names[0]].lora_B, first)  # and the deactivated one is not


def _optimizer_state(opt, adapters, names):
    if isinstance(opt, allocate.LocalAdamW):
        # moments, step counts and the module's own update count; its next LR follows the training clock
        return {n: (copy.deepcopy(opt.optimizers[n].state_dict()["state"]), opt.updates[n]) for n in names}
    return {(n, i): {k: v.clone() for k, v in opt.state[p].items()}
            for n in names for i, p in enumerate(adapters[n].adapter_params())}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("kind", allocate.OPTIMIZERS)
def test_step_leaves_inactive_adapters_and_their_state_bitwise_unchanged(kind):
    model, adapters = tiny_model()
    names = list(adapters)
    opt, sched = build_optimizer(kind, adapters, lora.head_parameters(model), lr=1e-2, weight_decay=0.1,
                                 total_steps=10, warmup_steps=0)
    data = batches(2)
    train_step(model, opt, sched, data[0])  # every module has moments now
    allocate.apply(adapters, [names[0], names[2]])
    idle = [names[1], names[3]]
    weights = {n: [p.clone() for p in adapters[n].adapter_params()] for n in idle}
    state = _optimizer_state(opt, adapters, idle)
    trained = adapters[names[0]].lora_A.clone()
    train_step(model, opt, sched, data[1])
    assert all(torch.equal(p, q) for n in idle for p, q in zip(adapters[n].adapter_params(), weights[n]))
    assert _same(_optimizer_state(opt, adapters, idle), state)  # no moment update, no weight decay, no own update
    assert not torch.equal(adapters[names[0]].lora_A, trained)


def test_global_is_one_adamw_over_every_adapter_param_with_linear_warmup_and_decay():
    model, adapters = tiny_model()
    allocate.apply(adapters, list(adapters)[:1])  # inactive modules are in the optimizer all the same
    head = lora.head_parameters(model)
    opt, sched = build_optimizer("global", adapters, head, lr=1e-2, head_lr=3e-3, weight_decay=0.1,
                                 total_steps=6, warmup_steps=2)
    assert isinstance(opt, torch.optim.AdamW)
    ids = [list(map(id, g["params"])) for g in opt.param_groups]
    assert ids == [[id(p) for a in adapters.values() for p in a.adapter_params()], list(map(id, head))]
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
    lrs = []
    for b in batches(6):
        lrs.append(allocate.current_lrs(opt))
        train_step(model, opt, sched, b)
    lrs.append(allocate.current_lrs(opt))
    factors = [0, 0.5, 1, 0.75, 0.5, 0.25, 0]  # t/2 over 2 warmup steps, then (6 - t)/4
    assert [d["adapters"] for d in lrs] == pytest.approx([1e-2 * f for f in factors])
    assert [d["head"] for d in lrs] == pytest.approx([3e-3 * f for f in factors])


def test_plain_params_for_full_fine_tuning():
    model, _ = tiny_model()
    params = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    opt, sched = build_optimizer("global", params=params, lr=1e-3, total_steps=5)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["params"] == params


def test_local_matches_adamw_when_every_module_is_always_active():
    model, adapters = tiny_model()
    ref_model = copy.deepcopy(model)
    ref_adapters = {n: ref_model.get_submodule(n) for n in adapters}
    opt, sched = build_optimizer("local", adapters, lora.head_parameters(model), lr=1e-2, head_lr=3e-3,
                                 weight_decay=0.05, total_steps=6, warmup_steps=2)
    assert sched is None
    ref = torch.optim.AdamW([{"params": [p for a in ref_adapters.values() for p in a.adapter_params()]},
                             {"params": lora.head_parameters(ref_model), "lr": 3e-3}], lr=1e-2, weight_decay=0.05)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda t: t / 2 if t < 2 else max(0.0, (6 - t) / 4))
    for b in batches(6):
        train_step(model, opt, None, b)
        train_step(ref_model, ref, ref_sched, b)
        lrs = allocate.current_lrs(opt)
        assert lrs["head"] == pytest.approx(ref.param_groups[1]["lr"])
        assert all(lrs[n] == pytest.approx(ref.param_groups[0]["lr"]) for n in adapters)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert not torch.equal(adapters[next(iter(adapters))].lora_B, torch.zeros(32, 4))  # it did train


def _global_factor(t, warmup, total):
    return t / warmup if t < warmup else max(0.0, (total - t) / max(1, total - warmup))


@pytest.mark.parametrize("k", [1, 8, 24])
def test_local_schedule_leaves_warmup_and_ends_near_zero_at_any_share(k):
    """24 modules (RoBERTa-base query+value), k trained at a time, re-chosen uniformly every 50 steps. Each module
    warms up over its own first updates and then follows the training clock's decay, so it leaves warmup even at
    1/24 and every module's LR ends near 0 at the end of training, whatever share of the steps it trained."""
    T, W, period = 1200, 72, 50
    adapters = {f"m{i}": LoRALinear(torch.nn.Linear(2, 2), r=1) for i in range(24)}
    names = list(adapters)
    opt, _ = build_optimizer("local", adapters, [], lr=1.0, total_steps=T, warmup_steps=W, active_share=k / 24)
    g = torch.Generator().manual_seed(0)
    seen = {n: [] for n in names}  # (global step, LR) of every update each module received
    for t in range(T):
        if t % period == 0:
            allocate.apply(adapters, [names[i] for i in torch.randperm(24, generator=g)[:k]])
        lrs = allocate.current_lrs(opt)
        for n in allocate.active_names(adapters):
            seen[n].append((t, lrs[n]))
        opt.step()
    own_warmup = round(W * k / 24)
    assert sum(1 for got in seen.values() if got) >= min(24, k * T // period // 2)
    for n, got in seen.items():
        if not got:
            continue
        assert len(got) > own_warmup  # one period is enough to leave warmup
        for t, lr in got[own_warmup:]:  # after its own warmup: exactly the training clock's schedule
            assert lr == pytest.approx(min(1.0, _global_factor(t, W, T)) if t >= W else 1.0)
        if got[-1][0] >= T - period:  # trained in the last period: its last LR is already near 0
            assert got[-1][1] <= period / (T - W) + 1e-12
        assert allocate.current_lrs(opt)[n] <= 1 / (T - W)  # ends near 0
    if k == 24:  # every module always active: the local schedule is the global one, float for float
        assert all(lr == _global_factor(t, W, T) for got in seen.values() for t, lr in got)


@pytest.mark.parametrize("warmup", [0, 2])
def test_global_and_local_differ_only_in_the_learning_rate_schedule(warmup):
    """torch's AdamW keeps moments and a step count per parameter and skips parameters whose grad is None, so the
    global optimizer already keeps each returning module's state and bias correction. Without warmup (where the
    local optimizer counts a module's own updates) the two give bitwise the same adapters and head, across
    re-allocations; with warmup they differ."""
    def run(kind):
        model, adapters = tiny_model()
        names = list(adapters)
        opt, sched = build_optimizer(kind, adapters, lora.head_parameters(model), lr=1e-2, head_lr=3e-3,
                                     weight_decay=0.1, total_steps=8, warmup_steps=warmup, active_share=0.5)
        for t, b in enumerate(batches(8)):
            if t % 3 == 0:
                allocate.apply(adapters, [names[(t // 3) % 4], names[(t // 3 + 1) % 4]])
            train_step(model, opt, sched, b)
        return model.state_dict()
    g, loc = run("global"), run("local")
    assert all(torch.equal(g[k], loc[k]) for k in g) == (warmup == 0)


# ----------------------------------------------------------------------------- no host reads in a step

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


@contextlib.contextmanager
def host_reads(forbid=False):
    """Count (or forbid) the Tensor methods that read a value back to the host."""
    calls, saved = [], {n: torch.Tensor.__dict__.get(n) for n in HOST_READS}

    def wrap(name, f):
        def read(self, *args, **kwargs):
            if forbid:
                raise AssertionError(f"host read: Tensor.{name}")
            calls.append(name)
            return f(self, *args, **kwargs)
        return read
    try:
        for n in HOST_READS:
            setattr(torch.Tensor, n, wrap(n, getattr(torch.Tensor, n)))
        yield calls
    finally:
        for n, f in saved.items():
            if f is None:
                delattr(torch.Tensor, n)
            else:
                setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("kind", allocate.OPTIMIZERS)
def test_scoring_adds_no_host_read_to_a_training_step(kind):
    model, adapters = tiny_model()
    alloc = Allocation(adapters, "discounted", 2, measure="gradient", schedule="periodic", period=1000)
    alloc.initial(adapters)
    opt, sched = build_optimizer(kind, adapters, lora.head_parameters(model), lr=1e-2, weight_decay=0.1,
                                 total_steps=100, warmup_steps=10)
    data = batches(3)

    def step(t):  # forward, backward, optimizer step, the per-step allocation call (not due)
        train_step(model, opt, sched, data[t])
        assert alloc.step(t + 1, adapters) is None

    step(0)  # optimizer state exists from here on
    with host_reads() as untracked:
        step(1)
    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = True
    with host_reads() as tracked:
        step(2)
    # what remains in both is not ours: transformers' attention-mask check and AdamW's CPU step counters
    assert tracked == untracked
    assert all(a.fwd_score > 0 and a.grad_score > 0 for a in adapters.values())  # tracking did run
    assert all(adapters[n].param_grad_score > 0 for n in alloc.active)
    with host_reads(forbid=True):
        assert alloc.step(3, adapters) is None


# ----------------------------------------------------------------------------- checkpoints

def test_state_dict_round_trip_resumes_identically():
    data = batches(8)

    def setup():
        model, adapters = tiny_model()
        importance.set_tracking(adapters, "forward")
        alloc = Allocation(adapters, "discounted", 2, measure="forward", schedule="periodic", period=2,
                           window="since_last", seed=5)
        opt, _ = build_optimizer("local", adapters, lora.head_parameters(model), lr=1e-2, head_lr=5e-3,
                                 weight_decay=0.1, total_steps=8, warmup_steps=2)
        return model, adapters, alloc, opt

    def run(model, adapters, alloc, opt, steps):
        for t in steps:
            train_step(model, opt, None, data[t])
            alloc.step(t + 1, adapters)

    model, adapters, alloc, opt = setup()
    alloc.initial(adapters, importance.probe(model, adapters, data[:1], "forward"))
    run(model, adapters, alloc, opt, range(0, 3))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "alloc": alloc.state_dict()}, buf)
    run(model, adapters, alloc, opt, range(3, 8))

    model2, adapters2, alloc2, opt2 = setup()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # plain data and tensors only, as train.py loads it
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    alloc2.load_state_dict(ckpt["alloc"], adapters2)
    assert allocate.active_names(adapters2) == alloc2.active
    run(model2, adapters2, alloc2, opt2, range(3, 8))

    assert alloc2.history == alloc.history and len(alloc.history) == 5
    assert torch.equal(alloc2.generator.get_state(), alloc.generator.get_state())
    s1, s2 = model.state_dict(), model2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # weights, scores and counts, bitwise
    assert _same(opt2.state_dict(), opt.state_dict())


def test_load_state_dict_refuses_another_configuration():
    _, adapters = tiny_model()
    sd = Allocation(adapters, "discounted", 2).state_dict()
    with pytest.raises(ValueError, match="differs from this run's in budget"):
        Allocation(adapters, "discounted", 3).load_state_dict(sd, adapters)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_raises_one_clear_value_error():
    model, adapters = tiny_model()
    s, head = torch.ones(4), lora.head_parameters(model)
    cases = [
        (lambda: allocate.topk(s, 0), "k must be an integer from 1"),
        (lambda: allocate.topk(s, 5), "k must be an integer from 1 to the number of modules \\(4\\)"),
        (lambda: allocate.multinomial(s, 2.5), "k must be an integer"),
        (lambda: allocate.uniform(s, 0), "k must be"),
        (lambda: allocate.threshold(s, 0.0), "p must be in \\(0, 1\\]"),
        (lambda: allocate.threshold(s, 1.5), "p must be in"),
        (lambda: allocate.discounted(s, 2), "needs counts"),
        (lambda: allocate.topk(torch.tensor([1.0, float("nan")]), 1), "finite and non-negative"),
        (lambda: Allocation(adapters, "greedy", 2), "unknown allocator 'greedy'"),
        (lambda: Allocation(adapters, "topk", 5), "k must be"),
        (lambda: Allocation(adapters, "threshold", 2), "p must be"),
        (lambda: Allocation(adapters, "topk", 2, measure="backward"), "unknown importance measure 'backward'"),
        (lambda: Allocation(adapters, "topk", 2, schedule="cosine"), "unknown schedule 'cosine'"),
        (lambda: Allocation(adapters, "topk", 2, window="ema"), "unknown importance window 'ema'"),
        (lambda: Allocation(adapters, "topk", 2, period=0), "period >= 1"),
        (lambda: Allocation(adapters, "topk", 2, schedule="once"), "realloc_at >= 1"),
        (lambda: Allocation(adapters, "topk", 2, schedule="once", realloc_at=0), "realloc_at >= 1"),
        (lambda: Allocation(adapters, "topk", 2, measure="random"), "always pick the first"),
        (lambda: allocate.due("periodic", 3, period=0), "period >= 1"),
        (lambda: allocate.due("once", 3, realloc_at=0), "realloc_at >= 1"),
        (lambda: allocate.due("sometimes", 3), "unknown schedule"),
        (lambda: allocate.apply(adapters, ["nope"]), "no adapter module named"),
        (lambda: build_optimizer("adam", adapters, head, lr=1e-3, total_steps=10), "unknown optimizer 'adam'"),
        (lambda: build_optimizer("global", adapters, head, lr=1e-3, total_steps=0), "total_steps"),
        (lambda: build_optimizer("global", adapters, head, lr=1e-3, total_steps=5, warmup_steps=6), "warmup_steps"),
        (lambda: build_optimizer("local", params=head, lr=1e-3, total_steps=5), "needs adapters"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
