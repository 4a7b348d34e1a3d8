"""plumbing/dynamics.py: effective rank, head entropy, and that measuring does not disturb training."""
import json
import math

import torch
from conftest import run_train

from plumbing import dynamics


def test_effective_rank_of_identity_rank_one_and_scale():
    assert math.isclose(dynamics.effective_rank(torch.eye(7)), 7.0, rel_tol=1e-5)
    u, v = torch.randn(10, 1), torch.randn(1, 6)
    assert math.isclose(dynamics.effective_rank(u @ v), 1.0, rel_tol=1e-4)
    m = torch.randn(20, 8)
    assert math.isclose(dynamics.effective_rank(m), dynamics.effective_rank(1000 * m), rel_tol=1e-4)
    assert 1 < dynamics.effective_rank(m) < 8
    assert dynamics.effective_rank(torch.zeros(4, 4)) == 0.0  # no NaN for a zero matrix


def test_effective_rank_of_two_equal_directions_is_two():
    m = torch.zeros(5, 5)
    m[0, 0] = m[1, 1] = 3.0
    assert math.isclose(dynamics.effective_rank(m), 2.0, rel_tol=1e-5)


def test_entropy_of_uniform_causal_attention_is_ln_k():
    T = 6
    probs = torch.tril(torch.ones(T, T))
    probs = (probs / probs.sum(-1, keepdim=True)).expand(2, 3, T, T)  # (B, nh, T, T)
    ent, norm = dynamics.head_entropy(probs)
    expected = sum(math.log(k) for k in range(1, T + 1)) / T  # query q sees k = q+1 keys
    assert torch.allclose(ent, torch.full((3,), expected), atol=1e-5)
    assert torch.allclose(norm, torch.ones(3), atol=1e-5)


def test_entropy_of_one_hot_attention_is_zero():
    probs = torch.eye(5).expand(1, 2, 5, 5)  # every query looks only at itself
    ent, norm = dynamics.head_entropy(probs)
    assert torch.allclose(ent, torch.zeros(2)) and torch.allclose(norm, torch.zeros(2))


def test_instruments_leave_training_unchanged_and_write_valid_rows(data_dir, tmp_path):
    off = run_train(data_dir, tmp_path / "off", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0)
    on = run_train(data_dir, tmp_path / "on", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 2)
    assert [(r["train_loss"], r["val_loss"]) for r in off] == [(r["train_loss"], r["val_loss"]) for r in on]
    assert not (tmp_path / "off" / "dynamics.jsonl").exists()
    rows = [json.loads(line) for line in open(tmp_path / "on" / "dynamics.jsonl")]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    d, T, tokens = 96, 32, 4 * 32
    for r in rows:
        assert len(r["er_act"]) == 12 and all(1 <= v <= min(tokens, d) for v in r["er_act"])
        for key in ("er_weight", "er_grad"):
            assert set(r[key]) == {"q", "k", "v", "o", "w1", "w2", "w3"}
            assert all(1 <= v <= d for vals in r[key].values() for v in vals)
        assert len(r["attn_entropy"]) == 12 and len(r["attn_entropy"][0]) == 12
        assert all(0 <= h <= math.log(T) for layer in r["attn_entropy"] for h in layer)
        assert all(0 <= h <= 1 + 1e-6 for layer in r["attn_entropy_norm"] for h in layer)


def test_resumed_run_probes_the_same_batch(data_dir, tmp_path):
    on = ("--dynamics-every", 2)  # every eval, as by default
    run_train(data_dir, tmp_path / "full", "--max-steps", 4, "--eval-every", 2, *on)
    run_train(data_dir, tmp_path / "half", "--max-steps", 2, "--decay-steps", 4, "--eval-every", 2, *on)
    run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 4, *on)
    values = lambda p: [{k: v for k, v in json.loads(line).items() if k != "measure_ms"} for line in open(p)]
    assert values(tmp_path / "full" / "dynamics.jsonl") == values(tmp_path / "half" / "dynamics.jsonl")
