"""meta.py: first-order MAML, SMLMT / LM episodes, and the hybrid schedule in train.py."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import data
import meta
import train
from conftest import TINY, run_train
from model import Transformer, preset

META_FIELDS = {"meta_ms", "meta_steps", "support_acc", "query_acc", "episode_acc_before", "episode_acc_after", "ar_ms"}


def setup(data_dir, *extra):
    a = train.get_args(["--data-dir", str(data_dir), *TINY, *map(str, extra)])
    dmeta = data.load_meta(data_dir)
    tok = {s: np.memmap(Path(data_dir) / f"{s}.bin", dtype=dmeta["dtype"], mode="r") for s in ("train", "val")}
    eps = meta.Episodes(a, Path(data_dir), dmeta, tok["train"], tok["val"])
    torch.manual_seed(0)
    model = Transformer(preset("11m", dmeta["vocab_size"], 32))
    return a, eps, model, dmeta


def test_fomaml_gradient_matches_the_hand_derivation_on_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    xs, ys, xq, yq = torch.randn(5, 3), torch.randn(5, 2), torch.randn(4, 3), torch.randn(4, 2)
    mse = lambda W, x, y: ((x @ W.T - y) ** 2).mean()
    grad = lambda W, x, y: 2 * (x @ W.T - y).T @ x / y.numel()  # d mse / d W, by hand
    lr, steps = 0.1, 3

    support_loss = lambda fast: F.mse_loss(functional_call(lin, fast, (xs,)), ys)
    fast = meta.inner_loop(support_loss, dict(lin.named_parameters()), steps, lr)
    F.mse_loss(functional_call(lin, fast, (xq,)), yq).backward()

    W = lin.weight.detach().clone()
    for _ in range(steps):
        W = W - lr * grad(W, xs, ys)
    assert torch.allclose(lin.weight.grad, grad(W, xq, yq), atol=1e-6)  # grad L_Q at the adapted W
    # second-order MAML would differ: the test can tell the two apart
    W0 = lin.weight.detach().clone().requires_grad_()
    Wn = W0
    for _ in range(steps):
        Wn = Wn - lr * torch.autograd.grad(mse(Wn, xs, ys), Wn, create_graph=True)[0]
    second = torch.autograd.grad(mse(Wn, xq, yq), W0)[0]
    assert not torch.allclose(second, lin.weight.grad, atol=1e-4)


def test_inner_loop_lowers_the_support_loss(data_dir):
    for spec in ("head", "top-2"):
        a, eps, model, _ = setup(data_dir, "--inner-params", spec, "--inner-lr", "0.05")
        ep = meta.to_device(eps.val[0], "cpu")
        names = meta.adapted_names(model, spec)
        support_loss, fast, _ = meta.episode_losses(model, ep, a, names, {})
        # prototypes often fit a tiny support set exactly (loss 0): start from an uninformed head
        fast |= {n: torch.zeros_like(w).requires_grad_() for n, w in fast.items() if n.startswith("head.")}
        before = support_loss(fast).item()
        after = support_loss(meta.inner_loop(support_loss, fast, 5, a.inner_lr)).item()
        assert after < before, spec
        assert all(p.grad is None for p in model.parameters())  # the inner loop leaves .grad alone


def test_adapted_names():
    model = Transformer(preset("11m", 256, 32))
    assert meta.adapted_names(model, "head") == []
    top = meta.adapted_names(model, "top-2")
    assert "norm.weight" in top and all(n == "norm.weight" or n.startswith(("layers.10.", "layers.11.")) for n in top)
    assert len(meta.adapted_names(model, "all")) == len(list(model.parameters()))


def test_smlmt_episode_shapes_masking_and_labels(data_dir):
    a, eps, _, dmeta = setup(data_dir)
    rng = np.random.default_rng(0)
    ep = eps._episode("train", rng)
    N, K, Q, L = a.n_way, a.k_shot, a.n_query, a.episode_len
    assert ep["xs"].shape == (N * K, L) and ep["xq"].shape == (N * Q, L)
    mask = dmeta["mask_id"]
    for x, y in ((ep["xs"], ep["ys"]), (ep["xq"], ep["yq"])):
        assert sorted(np.unique(y)) == list(range(N)) and (np.bincount(y) == len(y) // N).all()
        assert (x == mask).any(axis=1).all()  # every window has its masked word
    label_of = {}
    for x, y in zip(np.concatenate([ep["xs"], ep["xq"]]), np.concatenate([ep["ys"], ep["yq"]])):
        label_of.setdefault(int(y), set())
    for c, t in enumerate(ep["types"]):  # chosen types in class order; a class's token never appears unmasked
        rows = np.concatenate([ep["xs"][c * K : (c + 1) * K], ep["xq"][c * Q : (c + 1) * Q]])
        assert not (rows == t).any()
    labels = [int(ep["ys"][c * K]) for c in range(N)]
    assert sorted(labels) == list(range(N))  # a permutation of 0..N-1


def test_episode_labels_are_permuted_and_sampler_is_deterministic(data_dir):
    a, eps, _, _ = setup(data_dir)
    e1, e2, e3 = eps.train_episode(3, "cpu"), eps.train_episode(3, "cpu"), eps.train_episode(4, "cpu")
    assert all(torch.equal(e1[k], e2[k]) for k in ("xs", "ys", "xq", "yq"))
    assert not torch.equal(e1["xs"], e3["xs"])
    firsts = {tuple(eps.train_episode(i, "cpu")["ys"][:: a.k_shot].tolist()) for i in range(6)}
    assert len(firsts) > 1  # the label order changes between episodes
    assert e1["tokens"] == a.n_way * (a.k_shot + a.n_query) * a.episode_len


def test_lm_episodes_come_from_one_document(data_dir):
    a, eps, model, dmeta = setup(data_dir, "--task", "lm")
    assert a.inner_params == "top-1"
    ep = eps._episode("train", np.random.default_rng(1))
    assert ep["xs"].shape == (a.k_shot, a.episode_len) and ep["yq"].shape == (a.n_query, a.episode_len)
    assert not (np.concatenate([ep["xs"], ep["xq"]]) == dmeta["eot_id"]).any()
    loss, stats = meta.meta_step(model, meta.to_device(ep, "cpu"), a)
    assert torch.isfinite(loss) and 0 <= stats["query_acc"] <= 1
    assert model.layers[0].attn.q.weight.grad is not None  # the meta-gradient reaches the backbone


def test_meta_step_flops_include_the_inner_loop(data_dir):
    a, eps, model, _ = setup(data_dir, "--inner-params", "top-1")
    head_only = setup(data_dir)[1].step_flops(model.args)
    assert eps.step_flops(model.args) > head_only > 0


def test_hybrid_ratio_zero_reproduces_vanilla_exactly(data_dir, tmp_path):
    van = run_train(data_dir, tmp_path / "v", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0)
    met = run_train(data_dir, tmp_path / "m", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0,
                    "--meta", "--hybrid-ratio", 0)
    assert [(r["train_loss"], r["val_loss"]) for r in van] == [(r["train_loss"], r["val_loss"]) for r in met]


def test_meta_run_sees_the_vanilla_lm_batches_in_order(data_dir, tmp_path, monkeypatch):
    seen = []
    real = train.get_batch
    monkeypatch.setattr(train, "get_batch", lambda *a: (seen.append(a[4:6]), real(*a))[1])
    rows = run_train(data_dir, tmp_path, "--max-steps", 10, "--eval-every", 10, "--meta", "--dynamics-every", 0)
    lm = [pos for stream, pos in seen if stream == train.STREAM_LM]
    assert lm == list(range(len(lm))) and 0 < len(lm) < 10
    assert rows[-1]["meta_steps"] + rows[-1]["lm_steps"] == 10


def test_meta_run_logs_every_field(data_dir, tmp_path):
    rows = run_train(data_dir, tmp_path, "--max-steps", 24, "--eval-every", 12, "--meta", "--dynamics-every", 0)
    last = rows[-1]
    assert META_FIELDS <= set(last) and last["meta_steps"] > 0
    assert last["meta_ms"] > 0 and last["ar_ms"] > 0
    assert 0 <= last["support_acc"] <= 1 and 0 <= last["query_acc"] <= 1
    assert 0 <= last["episode_acc_before"] <= 1 and 0 <= last["episode_acc_after"] <= 1
    vanilla_flops = last["lm_steps"] * train.flops_per_token(preset("11m", 256, 32), 32) * 4 * 32
    assert last["flops"] > vanilla_flops  # the meta steps' FLOPs are counted too


def test_meta_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 12, "--eval-every", 6, "--meta")
    run_train(data_dir, tmp_path / "half", "--max-steps", 6, "--decay-steps", 12, "--eval-every", 6, "--meta")
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 12)
    keys = ("train_loss", "val_loss", "meta_loss", "query_acc", "episode_acc_after")
    assert [resumed[-1][k] for k in keys] == [full[-1][k] for k in keys]


def test_bad_meta_flags_are_refused(data_dir):
    with pytest.raises(SystemExit, match="--inner-params 'top-x'"):
        setup(data_dir, "--inner-params", "top-x")
    with pytest.raises(SystemExit, match="--inner-params head needs --task smlmt"):
        setup(data_dir, "--task", "lm", "--inner-params", "head")
    with pytest.raises(SystemExit, match="lower --n-way"):
        setup(data_dir, "--n-way", 500)


def test_default_episode_is_about_one_lm_batch():
    a = train.get_args([])
    assert meta.default_n_way(a) == 32  # the paper's 32-way at the default 32 x 512 batch
    a = train.get_args(["--batch-size", "16", "--block-size", "128"])
    assert meta.default_n_way(a) == 4 and 4 * (4 + 4) * 64 == 16 * 128


def test_meta_weight_scales_the_meta_gradient(data_dir):
    grads = []
    for w in (1.0, 0.25):
        a, eps, model, _ = setup(data_dir, "--meta-weight", w)
        meta.meta_step(model, eps.train_episode(0, "cpu"), a)
        grads.append(model.layers[3].mlp.w2.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], 0.25 * grads[0], atol=1e-7)
