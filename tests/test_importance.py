"""Tests for importance.py: eq. 2 and 3 on hand-made numbers, which accumulators each measure switches on,
stacking order, and the first-allocation probe (forward scores equal hand-computed output norms; state,
gradients and accumulators left as before). Tiny random RoBERTa, CPU, seeded."""
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

import importance
import lora
import vera


def tiny_model(seed=0, layers=2, targets="query,value", kind="lora"):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = RobertaForSequenceClassification(cfg)
    if kind == "vera":
        return model, vera.inject_vera(model, targets, r=4)
    return model, lora.inject(model, targets, lambda lin: lora.LoRALinear(lin, r=4, alpha=8))


def batches(n, seed=1, bs=3, seq=7):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 100, (bs, seq), generator=g),
             "labels": torch.randint(0, 2, (bs,), generator=g)} for _ in range(n)]


# ----------------------------------------------------------------------------- eq. 2 and eq. 3

def test_normalize_is_eq2():
    y = torch.tensor([1.0, 3.0, 4.0, 2.0])
    torch.testing.assert_close(importance.normalize(y), torch.tensor([0.1, 0.3, 0.4, 0.2]))
    torch.testing.assert_close(importance.normalize(torch.zeros(4)), torch.full((4,), 0.25))  # nothing measured yet


def test_discount_is_eq3_with_counts_starting_at_one():
    y_hat = torch.tensor([0.1, 0.3, 0.4, 0.2])
    n_updates = torch.tensor([0, 1, 3, 4])
    torch.testing.assert_close(importance.discount(y_hat, n_updates), torch.tensor([0.1 / 1, 0.3 / 2, 0.4 / 4, 0.2 / 5]))


# ----------------------------------------------------------------------------- tracking and stacking

@pytest.mark.parametrize("measure, flags", [("forward", (True, False, False)), ("gradient", (False, True, False)),
                                           ("param_grad", (False, False, True)), ("random", (False, False, False))])
def test_set_tracking_switches_exactly_what_the_measure_needs(measure, flags):
    _, adapters = tiny_model()
    for a in adapters.values():
        a.track_forward = a.track_grad = a.track_param_grad = True  # stale flags from an earlier measure go off
    importance.set_tracking(adapters, measure)
    assert all((a.track_forward, a.track_grad, a.track_param_grad) == flags for a in adapters.values())


def test_scores_are_sums_over_counts_stacked_in_adapter_order():
    _, adapters = tiny_model()
    for i, a in enumerate(adapters.values()):
        a.fwd_score.fill_(i + 1.0)
        a.fwd_count.fill_(2.0)
        a.grad_score.fill_(10.0 * i)
        a.grad_count.fill_(i)  # module 0 was never measured: score 0, not NaN
        a.param_grad_score.fill_(100.0 * i)
        a.param_grad_count.fill_(4.0)
        a.n_updates.fill_(3 * i)
    f64 = torch.float64
    torch.testing.assert_close(importance.scores(adapters, "forward"), torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=f64))
    torch.testing.assert_close(importance.scores(adapters, "gradient"), torch.tensor([0.0, 10.0, 10.0, 10.0], dtype=f64))
    torch.testing.assert_close(importance.scores(adapters, "param_grad"), torch.tensor([0.0, 25.0, 50.0, 75.0], dtype=f64))
    torch.testing.assert_close(importance.scores(adapters, "random"), torch.ones(4))
    assert importance.counts(adapters).tolist() == [0, 3, 6, 9]
    y = importance.scores(adapters, "forward")
    importance.reset(adapters)  # scores() is a copy: resetting the accumulators does not change it
    assert y.tolist() == [0.5, 1.0, 1.5, 2.0]
    assert all(getattr(a, f"{k}_{v}") == 0 for a in adapters.values() for k in lora.SCORES for v in ("score", "count"))
    assert importance.counts(adapters).tolist() == [0, 3, 6, 9]  # counts are not scores


# ----------------------------------------------------------------------------- probe

def padded_batches(n, seed=1, bs=3, seq=7):
    """As batches(), right-padded: example i of each batch has seq - 2i real tokens."""
    out = batches(n, seed, bs, seq)
    for b in out:
        b["attention_mask"] = (torch.arange(seq)[None, :] < (seq - 2 * torch.arange(bs))[:, None]).long()
        b["input_ids"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, 1)  # RoBERTa's pad id
    return out


def randomize_biases(adapters, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters.values():
            a.base.bias.copy_(torch.randn(a.base.bias.shape, generator=g))


def test_probe_forward_equals_hand_computed_output_norms_and_restores_everything():
    model, adapters = tiny_model()
    randomize_biases(adapters)
    data = padded_batches(2)
    total = {name: torch.zeros(()) for name in adapters}
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    masks = iter([b["attention_mask"] for b in data for _ in adapters])

    def record(name):
        def hook(module, inputs, out):  # sum over real tokens of ||h - b||_2, h: (batch, seq, out)
            norms = torch.linalg.vector_norm(out - module.base.bias, dim=-1)
            total[name] += (norms * next(masks)).sum()
        return hook
    hooks = [a.register_forward_hook(record(name)) for name, a in adapters.items()]
    model.eval()  # dropout is 0, so eval and train outputs agree; eval mode keeps the accumulators out of it
    with torch.no_grad():
        for b in data:
            model(**b)
    for h in hooks:
        h.remove()
    expected = {name: total[name] / tokens for name in adapters}  # the mean per real token
    names = list(adapters)
    adapters[names[1]].set_active(False)
    adapters[names[2]].set_active(False)
    adapters[names[0]].track_grad = True
    y = importance.probe(model, adapters, data, "forward")
    torch.testing.assert_close(y.float(), torch.stack([expected[n] for n in names]), rtol=1e-5, atol=1e-5)
    assert [a.active for a in adapters.values()] == [True, False, False, True]
    assert [(a.track_forward, a.track_grad, a.track_param_grad) for a in adapters.values()] == \
        [(False, True, False)] + [(False, False, False)] * 3
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(getattr(a, f"{k}_{v}") == 0 for a in adapters.values() for k in lora.SCORES for v in ("score", "count"))
    assert [p.requires_grad for a in adapters.values() for p in a.adapter_params()] == [True] * 2 + [False] * 4 + [True] * 2


@pytest.mark.parametrize("measure", ["gradient", "param_grad"])
def test_probe_gradient_measures_score_every_module_without_training(measure):
    model, adapters = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for a in list(adapters.values())[:2]:
        a.set_active(False)  # inactive modules are scored too: the probe activates every adapter
    y = importance.probe(model, adapters, batches(2), measure)
    assert y.shape == (4,) and (y > 0).all()  # with B = 0 only grad B is non-zero, enough for a score
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no step, accumulators back to zero
    assert [a.active for a in adapters.values()] == [False, False, True, True]
    assert all(p.grad is None for p in model.parameters())


def test_probe_param_grad_on_vera():
    model, adapters = tiny_model(kind="vera")
    y = importance.probe(model, adapters, batches(1), "param_grad")
    assert y.shape == (4,) and (y > 0).all()  # lambda_b = 0 at init: only grad lambda_b is non-zero


def test_probe_is_none_for_random_or_no_batches():
    model, adapters = tiny_model()
    assert importance.probe(model, adapters, batches(2), "random") is None
    assert importance.probe(model, adapters, [], "forward") is None


def test_probe_gradient_needs_labels():
    model, adapters = tiny_model()
    b = batches(1)[0]
    del b["labels"]
    with pytest.raises(ValueError, match="labels"):
        importance.probe(model, adapters, [b], "gradient")
    assert all(a.active for a in adapters.values()) and all(p.grad is None for p in model.parameters())


def test_bad_measure_or_window_raises():
    _, adapters = tiny_model()
    with pytest.raises(ValueError, match="unknown importance measure 'backward'"):
        importance.set_tracking(adapters, "backward")
    with pytest.raises(ValueError, match="unknown importance measure"):
        importance.scores(adapters, "norm")
    with pytest.raises(ValueError, match="unknown importance window 'ema'"):
        importance.check_window("ema")


# ----------------------------------------------------------------------------- padding

def test_scores_skip_padding_in_a_plain_model_call():
    """A padded batch through a plain model(**batch) in training mode scores exactly what its examples score one
    at a time without padding: inject's pre-hook hands the attention mask to the adapters."""
    import torch.nn.functional as F
    model, adapters = tiny_model(layers=2)
    randomize_biases(adapters)
    for a in adapters.values():
        a.track_forward = a.track_grad = True
    model.train()  # dropout is 0
    batch = padded_batches(1)[0]
    labels = batch.pop("labels")
    F.cross_entropy(model(**batch).logits, labels, reduction="sum").backward()
    padded = {n: (a.fwd_score.clone(), a.fwd_count.clone(), a.grad_score.clone(), a.grad_count.clone())
              for n, a in adapters.items()}
    importance.reset(adapters)
    for i in range(len(labels)):  # one example at a time, cut to its real tokens: no padding at all
        n = int(batch["attention_mask"][i].sum())
        F.cross_entropy(model(input_ids=batch["input_ids"][i:i + 1, :n]).logits, labels[i:i + 1],
                        reduction="sum").backward()
    real = int(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()
    for n, a in adapters.items():
        fwd, fwd_n, grad, grad_n = padded[n]
        assert fwd_n == real and grad_n == real and a.fwd_count == real and a.grad_count == real
        torch.testing.assert_close(fwd, a.fwd_score, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, a.grad_score, rtol=1e-4, atol=1e-6)
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert next(iter(adapters.values())).token_mask.mask is None  # the mask lives only during the call
