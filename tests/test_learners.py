"""The variants in learners/: the low-rank inner loop (--inner-rank), Reptile (--outer), the AdamW
inner loop (--inner-opt), TARP (--tarp) and TAMS (--tams). Meta-SGD's tests are in test_meta.py."""
import argparse
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import CUT_AT_3, run_train
from test_meta import episode_fns, fomaml, setup
from torch.func import functional_call

import learners
import meta
from learners.adamw import adamw_direction
from learners.lowrank import LowRank
from learners.tams import choose
from learners.tarp import TARPLinear
from model import Transformer, preset
from plumbing import config
from plumbing.errors import UserError
from plumbing.tensors import to_device


def built(*flags):
    """A fresh 11m decoder (vocabulary 256, block 32) at seed 0, changed by the variants the flags select."""
    a = config.get_args(["--task", "lm", "--inner-params", "top-1", *map(str, flags)])
    torch.manual_seed(0)
    model = Transformer(preset("11m", 256, 32))
    learners.make(a).change_model(model)
    return model, learners.make(a)


def low_rank(params, rank, learn_v, seed):
    return LowRank(argparse.Namespace(inner_rank=rank, inner_rank_learn_v=learn_v)).reparam(params, seed)


def test_low_rank_fast_weights_with_u_zero_are_the_model(data_dir):
    a, eps, model, _, head = setup(data_dir, "--task", "lm", "--inner-params", "all", "--inner-rank", "3")
    params = dict(model.named_parameters())
    start, compose = low_rank(params, 3, True, seed=7)
    assert all(not n.endswith(".U") or not w.any() for n, w in start.items())  # U starts at zero
    assert {n for n in start if n.endswith(".U")} == {n + ".U" for n, w in params.items() if w.dim() == 2}
    x = torch.from_numpy(eps.val_episodes()[0]["xs"])
    with torch.no_grad():
        assert torch.equal(functional_call(model, compose(start), (x,)), model(x))


def numerical_rank(d):
    # W + U V is rounded to float32: about 1e-8 of noise in every singular value (|W| ~ 0.02),
    # while the real ones are >= 1e-4 here
    return int((torch.linalg.svdvals(d.double()) > 1e-6).sum())


@pytest.mark.parametrize("learn_v", [False, True])
def test_every_inner_step_changes_a_matrix_by_rank_at_most_r(data_dir, learn_v):
    R = 2
    extra = ["--inner-rank-learn-v"] if learn_v else []
    a, eps, model, _, head = setup(data_dir, "--task", "lm", "--inner-params", "top-1", "--inner-rank", R, *extra)
    ep = to_device(eps.val_episodes()[0], "cpu")
    support, fast, _, units = episode_fns(eps, model, head, ep, meta.adapted_names(model, fomaml("top-1")))
    for rank, steps in ((R, 1), (R, 3), (0, 3)):
        a.inner_rank, a.inner_steps = rank, steps
        phi = meta.adapt(support, fast, eps, ep, learners.make(a))
        deltas = {n: (phi[n] - w).detach() for n, w in fast.items() if w.dim() == 2}
        assert len(deltas) == 7  # q, k, v, o, w1, w2, w3 of the last block
        ranks = [numerical_rank(d) for d in deltas.values()]
        if rank:
            assert ranks == [R] * 7, ranks  # moved, within R directions
        else:
            assert min(ranks) > 4 * R, ranks  # full-rank adaptation: the check can tell
        assert (phi["norm.weight"] != fast["norm.weight"]).all()  # vectors adapt in full


def test_low_rank_meta_gradient_matches_the_hand_derivation_on_a_linear_model():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4, bias=False)
    xs, ys, xq, yq = torch.randn(6, 5), torch.randn(6, 4), torch.randn(3, 5), torch.randn(3, 4)
    grad = lambda W, x, y: 2 * (x @ W.T - y).T @ x / y.numel()  # d mse / d W, by hand
    R, lr = 2, 0.3
    start, compose = low_rank(dict(lin.named_parameters()), R, False, seed=3)
    # read V off compose: with U = [I_R; 0], W + U V - W is V in the first R rows
    V = (compose({"weight.U": torch.eye(4, R)})["weight"] - lin.weight).detach()[:R]  # (R, d_in)
    assert torch.allclose(V @ V.T, torch.eye(R), atol=1e-5)  # orthonormal rows

    support_loss = lambda f: F.mse_loss(functional_call(lin, compose(f), (xs,)), ys)
    fast = meta.inner_loop(support_loss, start, 2, lr)
    F.mse_loss(functional_call(lin, compose(fast), (xq,)), yq).backward()

    W, U = lin.weight.detach().clone(), torch.zeros(4, R)
    for _ in range(2):
        U = U - lr * grad(W + U @ V, xs, ys) @ V.T  # dL/dU = dL/dW_fast V^T
    assert torch.allclose(lin.weight.grad, grad(W + U @ V, xq, yq), atol=1e-6)  # first order: lands on W


def test_reptile_gradient_is_theta_minus_phi_over_the_inner_path(data_dir):
    steps, lr = 2, 0.05
    a, eps, model, _, head = setup(data_dir, "--task", "lm", "--inner-params", "top-1", "--outer", "reptile",
                                   "--inner-steps", steps, "--inner-lr", lr)
    ep = to_device(eps.val_episodes()[0], "cpu")
    loss, stats = meta.meta_loss(model, head, eps, ep, learners.make(a))
    loss.backward()
    names = meta.adapted_names(model, fomaml("top-1"))
    # by hand: plain SGD on next-token loss over support and query together
    phi = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.cat([ep["xs"], ep["xq"]]), torch.cat([ep["ys"], ep["yq"]])
    for _ in range(steps):
        w = {n: t.requires_grad_() for n, t in phi.items() if n in names}
        logits = functional_call(model, phi | w, (x,))
        g = torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), y.flatten()), list(w.values()))
        phi |= {n: (t - lr * gi).detach() for (n, t), gi in zip(w.items(), g)}
    for n, p in model.named_parameters():
        if n in names:
            assert torch.allclose(p.grad, (p.detach() - phi[n]) / (lr * steps), atol=1e-5), n
        else:
            assert p.grad is None, n  # Reptile moves only what the inner loop adapted
    assert stats == {"support_acc": None, "query_acc": None} and torch.isfinite(loss)


def test_reptile_with_hybrid_ratio_zero_reproduces_vanilla_exactly(data_dir, tmp_path):
    base = ["--max-steps", 6, "--eval-every", 3, "--meta-start", 0]
    vanilla = run_train(data_dir, tmp_path / "v", *base)
    reptile = run_train(data_dir, tmp_path / "r", *base, "--meta", "--outer", "reptile", "--inner-params", "top-2",
                        "--inner-rank", 2, "--hybrid-ratio", 0)
    for v, r in zip(vanilla, reptile):
        assert v["val_loss"] == r["val_loss"] and v["train_loss"] == r["train_loss"]
        assert v["episode_acc_after"] == r["episode_acc_after"]


@pytest.mark.parametrize("flags", [["--outer", "reptile", "--task", "pico"],
                                   ["--outer", "reptile", "--inner-params", "top-1"],
                                   ["--inner-rank", 2, "--inner-params", "top-1"],
                                   ["--inner-opt", "adamw", "--outer", "reptile", "--inner-params", "top-1"],
                                   ["--inner-opt", "adamw", "--task", "pico"]],
                         ids=["reptile-pico", "reptile-smlmt", "rank-smlmt", "adamw-reptile", "adamw-pico-head"])
def test_train_runs_meta_steps_with_each_learner(data_dir, tmp_path, flags):
    rows = run_train(data_dir, tmp_path, "--max-steps", 8, "--eval-every", 8, "--meta", "--meta-start", 0, *flags)
    assert rows[-1]["meta_steps"] > 0 and rows[-1]["meta_loss"] is not None
    assert all(x["val_loss"] == x["val_loss"] for x in rows)  # finite, not NaN


def test_learner_flags_that_cannot_run_are_refused(data_dir):
    for flags, words in ((["--inner-rank", 2], "--inner-rank 2"),  # smlmt's default is head
                         (["--inner-rank-learn-v"], "--inner-rank-learn-v"),
                         (["--outer", "reptile"], "--outer reptile"),
                         (["--outer", "reptile", "--task", "lm", "--learn-inner-lr"], "--learn-inner-lr"),
                         (["--outer", "reptile", "--task", "lm", "--inner-steps", 0], "--inner-steps"),
                         (["--tarp", "dynamic", "--task", "lm"], "--tarp dynamic needs --inner-rank"),
                         (["--tarp", "static", "--inner-rank", 2], "--tarp static needs")):  # smlmt's head
        with pytest.raises(UserError, match=words):
            setup(data_dir, *flags)


# ----------------------------------------------------------------------------- the AdamW inner loop (--inner-opt adamw)

@pytest.mark.parametrize("schedule,wd", [("constant", 0.0), ("cosine", 0.1)])
def test_adamw_inner_loop_is_torchs_adamw_and_stays_first_order(schedule, wd):
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    xs, ys, xq, yq = torch.randn(8, 5), torch.randn(8, 3), torch.randn(4, 5), torch.randn(4, 3)
    steps, lr = 4, 0.05
    support_loss = lambda f: F.mse_loss(functional_call(lin, f, (xs,)), ys)
    fast = meta.inner_loop(support_loss, dict(lin.named_parameters()), steps, lr,
                           direction=adamw_direction(steps, wd, schedule))
    F.mse_loss(functional_call(lin, fast, (xq,)), yq).backward()

    ref = copy.deepcopy(lin)  # torch's own AdamW, its lr set at each step by the schedule, written out here
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=wd)
    for i in range(steps):
        s = 1.0 if schedule == "constant" else min(1.0, i + 1.0) * 0.5 * (1 + math.cos(math.pi * i / steps))
        opt.param_groups[0]["lr"] = lr * s
        opt.zero_grad()
        F.mse_loss(ref(xs), ys).backward()
        opt.step()
    for n, p in ref.named_parameters():
        assert torch.allclose(fast[n], p, atol=1e-6), n
        assert not torch.allclose(fast[n], lin.get_parameter(n), atol=1e-3)  # it moved
    ref.zero_grad()
    F.mse_loss(ref(xq), yq).backward()  # first order: the meta-gradient is grad L_Q at the adapted weights
    for n, p in lin.named_parameters():
        assert torch.allclose(p.grad, ref.get_parameter(n).grad, atol=1e-6), n


def test_adamw_inner_loop_trains_and_resumes_exactly(data_dir, tmp_path):
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--task", "lm", "--inner-params", "top-1", "--inner-opt", "adamw",
              "--inner-schedule", "cosine", "--inner-lr", 1e-3)  # TINY's 0.1 is an SGD step
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common)
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6, *common)  # TINY is typed again
    keys = ("val_loss", "meta_loss", "episode_loss_before", "episode_loss_after")
    assert [resumed[-1][k] for k in keys] == [full[-1][k] for k in keys] and full[-1]["meta_steps"] > 0
    assert full[-1]["episode_loss_after"] < full[-1]["episode_loss_before"]  # AdamW steps lower the query loss


# ----------------------------------------------------------------------------- TARP (--tarp): Meta-Learning the Difference

@pytest.mark.parametrize("kind", ["static", "dynamic"])
def test_tarp_at_its_identity_init_is_the_plain_model_exactly(kind):
    plain, _ = built()
    tarp, _ = built("--tarp", kind, "--inner-rank", 4)
    x = torch.randint(0, 256, (2, 16))
    shared = {n: w for n, w in tarp.state_dict().items() if ".tarp_" not in n}
    assert shared.keys() == plain.state_dict().keys() and all(torch.equal(w, plain.state_dict()[n]) for n, w in shared.items())
    assert torch.equal(tarp(x), plain(x))  # S = 0: the shift is exactly zero
    d, kv, h, r = 96, 32, 384, 4  # U, V and S (or W_S) of the 7 matrices, counted by hand
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, h), (d, h), (h, d)]
    extra = 12 * sum((i + o) * r + (r * r * i if kind == "dynamic" else r * r) for i, o in shapes)
    assert sum(p.numel() for p in tarp.parameters()) == sum(p.numel() for p in plain.parameters()) + extra
    with torch.no_grad():
        tarp.layers[3].mlp.w2.tarp_s.normal_()
    assert not torch.allclose(tarp(x), plain(x))  # and a shift changes the outputs


def test_tarp_meta_gradient_reaches_w0_u_v_and_s_first_order():
    """On one dynamic TARP layer: the inner loop adapts U, V and W_S only; the meta-gradient of
    every tensor, W0 included, is grad L_Q at the adapted weights (first order)."""
    torch.manual_seed(0)
    layer = TARPLinear(nn.Linear(6, 4, bias=False), 2, "dynamic")
    with torch.no_grad():
        layer.weight.normal_(), layer.tarp_u.normal_(), layer.tarp_v.normal_(), layer.tarp_s.normal_(std=0.1)
    xs, ys, xq, yq = torch.randn(8, 6), torch.randn(8, 4), torch.randn(5, 6), torch.randn(5, 4)
    params = dict(layer.named_parameters())
    adapted = ["tarp_u", "tarp_v", "tarp_s"]
    support_loss = lambda f: F.mse_loss(functional_call(layer, {**params, **f}, (xs,)), ys)
    fast = meta.inner_loop(support_loss, {n: params[n] for n in adapted}, 3, 0.05)
    F.mse_loss(functional_call(layer, {**params, **fast}, (xq,)), yq).backward()

    copy_ = copy.deepcopy(layer)  # the adapted layer, by hand: three SGD steps on U, V, W_S, W0 fixed
    for _ in range(3):
        g = torch.autograd.grad(F.mse_loss(copy_(xs), ys), [copy_.get_parameter(n) for n in adapted])
        with torch.no_grad():
            for n, gi in zip(adapted, g):
                copy_.get_parameter(n).sub_(0.05 * gi)
    copy_.zero_grad()
    F.mse_loss(copy_(xq), yq).backward()
    for n in ["weight", *adapted]:
        got, want = layer.get_parameter(n).grad, copy_.get_parameter(n).grad
        assert got.abs().sum() > 0 and torch.allclose(got, want, atol=1e-6), n


def test_tarp_trains_adapts_only_the_shifts_and_resumes_exactly(data_dir, tmp_path):
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--task", "lm", "--inner-params", "top-1", "--tarp", "dynamic",
              "--inner-rank", 4)
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common)
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6)
    keys = ("val_loss", "meta_loss", "episode_loss_before", "episode_loss_after")
    assert [resumed[-1][k] for k in keys] == [full[-1][k] for k in keys] and full[-1]["meta_steps"] > 0
    assert full[-1]["episode_loss_after"] != full[-1]["episode_loss_before"]
    ck = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    assert ck["config"]["tarp"] == "dynamic" and "layers.11.mlp.w2.tarp_s" in ck["model"]
    names = meta.adapted_names(*built("--tarp", "dynamic", "--inner-rank", 4))
    assert names and all(".tarp_" in n and n.startswith("layers.11.") for n in names) and len(names) == 21


# ----------------------------------------------------------------------------- TAMS (--tams): the model search

def test_tams_ops_change_the_forward_pass_and_swiglu_everywhere_is_the_plain_model():
    plain, _ = built()
    tams, _ = built("--tams")
    with torch.no_grad():
        for layer in tams.layers:
            layer.lowrank[1].weight.normal_(std=0.02)  # a low-rank op that does something
    x = torch.randint(0, 256, (2, 16))
    one_hot = lambda op: F.one_hot(torch.full((12,), op), 3).float()

    def with_arch(arch):
        for i, layer in enumerate(tams.layers):
            layer.arch = arch[i]
        out = tams(x)
        for layer in tams.layers:
            layer.arch = None
        return out

    outs = [with_arch(one_hot(op)) for op in range(3)]
    assert torch.equal(outs[0], plain(x)) and torch.equal(tams(x), plain(x))  # SwiGLU everywhere, or no arch
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])  # skip, low-rank differ
    assert (choose(tams, x).argmax(-1) == 0).all()  # the controller starts on every block's own SwiGLU


def test_tams_straight_through_gradient_reaches_the_controller(data_dir):
    a, eps, model, _, head = setup(data_dir, "--task", "lm", "--inner-params", "top-1", "--tams")
    model, learner = built("--tams")
    loss, _ = meta.meta_loss(model, head, eps, eps.train_episode(0, "cpu"), learner)
    loss.backward()
    last = model.controller[2]
    assert last.weight.grad is not None and last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.layers[11].lowrank.parameters())  # the low-rank op learns too
    learner.a.inner_params = "all"
    assert not any(n.startswith("controller.") for n in meta.adapted_names(model, learner))  # chosen, never adapted
    assert all(layer.arch is None for layer in model.layers)  # LM steps after the episode use the SwiGLU


def test_tams_trains_logs_its_choices_and_resumes_exactly(data_dir, tmp_path):
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--task", "lm", "--inner-params", "top-1", "--tams")
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common)
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6)
    keys = ("val_loss", "meta_loss", "episode_loss_before", "episode_loss_after", "tams_choices")
    assert [resumed[-1][k] for k in keys] == [full[-1][k] for k in keys] and full[-1]["meta_steps"] > 0
    choices = full[-1]["tams_choices"]  # per block, val episodes per op
    assert len(choices) == 12 and all(sum(c) == 2 for c in choices)  # TINY: 2 val episodes
