"""meta.py and tasks/: first-order MAML, SMLMT / pico / LM episodes, and the hybrid schedule."""
import argparse
import dataclasses
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import CUT_AT_3, TINY, run_train
from torch.func import functional_call

import data
import learners
import meta
import tasks
import train
from learners.metasgd import key
from model import Transformer, preset
from plumbing import accounting, config
from plumbing.errors import UserError
from plumbing.tensors import ce, fp32, to_device, use_compile
from tasks import smlmt
from tools.inspect_episodes import best_temperature

META_FIELDS = {"meta_ms", "meta_steps", "support_acc", "query_acc", "episode_acc_before", "episode_acc_after", "ar_ms"}


def setup(data_dir, *extra):
    a = config.get_args(["--data-dir", str(data_dir), *TINY, *map(str, extra)])
    dmeta = data.load_meta(data_dir)
    tok = {s: np.memmap(Path(data_dir) / f"{s}.bin", dtype=dmeta["dtype"], mode="r") for s in ("train", "val")}
    eps = tasks.make(a, Path(data_dir), dmeta, tok["train"], tok["val"])
    torch.manual_seed(0)
    model = Transformer(preset("11m", dmeta["vocab_size"], 32))
    head = eps.make_head(model.args.d_model, model.args.vocab_size)
    return a, eps, model, dmeta, head


def episode_fns(task, model, head, ep, names):
    """(support(fast), starting fast weights, query(fast), units) of an episode, as meta.py uses them."""
    fast, ep = task.start(model, head, ep, names)
    return (lambda f: task.support(model, f, ep)), fast, (lambda f: task.query(model, f, ep)), task.units(ep)


def fomaml(spec):
    """Plain FOMAML's learner adapting --inner-params spec (for meta.adapted_names)."""
    return meta.Learner(argparse.Namespace(inner_params=spec))


def meta_step(model, head, task, ep, a, learner=None):
    """meta.meta_loss and its backward: the meta-gradient lands in .grad."""
    loss, stats = meta.meta_loss(model, head, task, ep, learner or learners.make(a))
    loss.backward()
    return loss.detach(), stats


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
        a, eps, model, _, head = setup(data_dir, "--inner-params", spec, "--inner-lr", "0.05")
        ep = to_device(eps.val_episodes()[0], "cpu")
        names = meta.adapted_names(model, fomaml(spec))
        support, fast, _, _ = episode_fns(eps, model, head, ep, names)
        support_loss = lambda f: ce(*support(f))
        # prototypes often fit a tiny support set exactly (loss 0): start from an uninformed head
        fast |= {n: torch.zeros_like(w).requires_grad_() for n, w in fast.items() if n.startswith("head.")}
        before = support_loss(fast).item()
        after = support_loss(meta.inner_loop(support_loss, fast, 5, a.inner_lr)).item()
        assert after < before, spec
        assert all(p.grad is None for p in [*model.parameters(), *head.parameters()])  # .grad left alone


def test_adapted_names():
    model = Transformer(preset("11m", 256, 32))
    assert meta.adapted_names(model, fomaml("head")) == []
    top = meta.adapted_names(model, fomaml("top-2"))
    assert "norm.weight" in top and all(n == "norm.weight" or n.startswith(("layers.10.", "layers.11.")) for n in top)
    assert len(meta.adapted_names(model, fomaml("all"))) == len(list(model.parameters()))


def test_smlmt_episode_shapes_masking_and_labels(data_dir):
    a, eps, _, dmeta, _ = setup(data_dir)
    rng = np.random.default_rng(0)
    ep = eps.episode("train", rng)
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
    a, eps, _, _, _ = setup(data_dir)
    e1, e2, e3 = eps.train_episode(3, "cpu"), eps.train_episode(3, "cpu"), eps.train_episode(4, "cpu")
    assert all(torch.equal(e1[k], e2[k]) for k in ("xs", "ys", "xq", "yq"))
    assert not torch.equal(e1["xs"], e3["xs"])
    firsts = {tuple(eps.train_episode(i, "cpu")["ys"][:: a.k_shot].tolist()) for i in range(6)}
    assert len(firsts) > 1  # the label order changes between episodes
    assert e1["tokens"] == a.n_way * (a.k_shot + a.n_query) * a.episode_len


def test_lm_episodes_come_from_one_document(data_dir):
    a, eps, model, dmeta, head = setup(data_dir, "--task", "lm")
    assert a.inner_params == tasks.get("lm").DEFAULTS["inner_params"] != "head"
    ep = eps.episode("train", np.random.default_rng(1))
    assert ep["xs"].shape == (a.k_shot, a.episode_len) and ep["yq"].shape == (a.n_query, a.episode_len)
    assert not (np.concatenate([ep["xs"], ep["xq"]]) == dmeta["eot_id"]).any()
    loss, stats = meta_step(model, head, eps, to_device(ep, "cpu"), a)
    assert torch.isfinite(loss) and 0 <= stats["query_acc"] <= 1
    assert model.layers[0].attn.q.weight.grad is not None  # the meta-gradient reaches the backbone


def test_meta_step_flops_include_the_inner_loop(data_dir):
    a, eps, model, _, _ = setup(data_dir, "--inner-params", "top-1")
    per_token = lambda L, backward=True, lm_head=False: accounting.flops_per_token(model.args, L, backward, lm_head)
    b = setup(data_dir)[0]
    head_only = meta.step_flops(eps, learners.make(b), per_token)
    assert meta.step_flops(eps, learners.make(a), per_token) > head_only > 0


def test_hybrid_ratio_zero_reproduces_vanilla_exactly(data_dir, tmp_path):
    van = run_train(data_dir, tmp_path / "v", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0)
    met = run_train(data_dir, tmp_path / "m", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0,
                    "--meta", "--hybrid-ratio", 0)
    learned = run_train(data_dir, tmp_path / "l", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0,
                        "--meta", "--hybrid-ratio", 0, "--learn-inner-lr")  # step sizes in the optimiser, never stepped
    want = [(r["train_loss"], r["val_loss"]) for r in van]
    assert want == [(r["train_loss"], r["val_loss"]) for r in met] == [(r["train_loss"], r["val_loss"]) for r in learned]


def test_meta_run_sees_the_vanilla_lm_batches_in_order(data_dir, tmp_path, monkeypatch):
    seen = []
    real = train.get_batch
    monkeypatch.setattr(train, "get_batch", lambda *a: (seen.append(a[4:6]), real(*a))[1])
    rows = run_train(data_dir, tmp_path, "--max-steps", 10, "--eval-every", 10, "--meta", "--meta-start", 0,
                     "--dynamics-every", 0)
    lm = [pos for stream, pos in seen if stream == train.STREAM_LM]
    assert lm == list(range(len(lm))) and 0 < len(lm) < 10
    assert rows[-1]["meta_steps"] + rows[-1]["lm_steps"] == 10


def test_meta_run_logs_every_field(data_dir, tmp_path):
    rows = run_train(data_dir, tmp_path, "--max-steps", 24, "--eval-every", 12, "--meta", "--meta-start", 0,
                     "--dynamics-every", 0)
    last = rows[-1]
    assert META_FIELDS <= set(last) and last["meta_steps"] > 0
    assert last["meta_ms"] > 0 and last["ar_ms"] > 0
    assert 0 <= last["support_acc"] <= 1 and 0 <= last["query_acc"] <= 1
    assert 0 <= last["episode_acc_before"] <= 1 and 0 <= last["episode_acc_after"] <= 1
    vanilla_flops = last["lm_steps"] * accounting.flops_per_token(preset("11m", 256, 32), 32) * 4 * 32
    assert last["flops"] > vanilla_flops  # the meta steps' FLOPs are counted too


def test_bad_meta_flags_are_refused(data_dir):
    with pytest.raises(UserError, match="--inner-params 'top-x'"):
        setup(data_dir, "--inner-params", "top-x")
    with pytest.raises(UserError, match="--inner-params head needs --task smlmt or pico"):
        setup(data_dir, "--task", "lm", "--inner-params", "head")
    with pytest.raises(UserError, match="lower --n-way"):
        setup(data_dir, "--n-way", 500)


def test_default_episode_is_about_one_lm_batch():
    a = config.get_args(["--recipe", "paper"])  # the paper's 32 x 512 batch
    assert (a.k_shot, a.n_query) == (8, 4) and a.n_way == 21  # 21 x (8 + 4) x 64 ~ 32 x 512
    a = config.get_args(["--batch-size", "16", "--block-size", "128"])
    assert a.n_way == 4  # 2048 tokens would give 3-way: the floor keeps chance at 1/4
    assert config.get_args(["--task", "lm"]).k_shot == config.get_args(["--task", "pico"]).k_shot == 4
    assert config.get_args(["--task", "pico", "--batch-size", "16"]).n_way == 32  # the released code's
    assert config.get_args(["--k-shot", "2"]).k_shot == 2


def test_meta_weight_scales_the_meta_gradient(data_dir):
    grads = []
    for w in (1.0, 0.25):
        a, eps, model, _, head = setup(data_dir, "--meta-weight", w)
        run = SimpleNamespace(world=1, rank=0, task=eps, device="cpu", ctx=nullcontext(),
                              net=train.Objective(model, model, head, nn.ParameterDict(), eps, learners.make(a)))
        train.step_grads(run, a, "meta", 0)  # the meta step train.py takes
        grads.append(model.layers[3].mlp.w2.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], 0.25 * grads[0], atol=1e-7)


# ----------------------------------------------------------------------------- the heads (issue: meta that learns)

def test_first_query_loss_is_about_ln_n_at_init(data_dir):
    a, eps, model, _, head = setup(data_dir)
    losses = [meta_step(model, head, eps, eps.train_episode(i, "cpu"), a)[0].item() for i in range(4)]
    # raw squared distances gave 14-43 on enwiki; with the temperature the first losses are of the
    # order of chance (ln N), lower only where the prototypes already classify (this corpus is repetitive)
    assert 0.25 * np.log(a.n_way) < np.mean(losses) < np.log(a.n_way) + 0.3


def test_features_read_the_requested_position(data_dir):
    a, eps, model, _, _ = setup(data_dir)
    ep = eps.train_episode(0, "cpu")
    h = model(ep["xs"], hidden=True)
    params = dict(model.named_parameters())
    rows = torch.arange(len(h))
    want = {"before-mask": h[rows, ep["ps"] - 1], "mask": h[rows, ep["ps"]], "last": h[:, -1], "mean": h.mean(1)}
    for kind, w in want.items():
        assert torch.allclose(smlmt.features(model, params, ep["xs"], ep["ps"], kind), w, atol=1e-6), kind
    assert (ep["xs"][rows, ep["ps"]] == 2).all()  # the mask really sits at ps (mask id 2, trimmed vocab)


def test_features_at_the_mask_need_only_the_window_up_to_it(monkeypatch):
    torch.manual_seed(0)
    model = Transformer(preset("11m", 512, 64))
    params = dict(model.named_parameters())
    x, p = torch.randint(0, 512, (6, 64)), torch.tensor([16, 20, 33, 40, 17, 21])
    h = model(x, hidden=True)  # (6, 64, d): the whole windows
    rows = torch.arange(6)
    seen = []
    decoder = smlmt.decoder
    monkeypatch.setattr(smlmt, "decoder", lambda m, prm, xx, **kw: seen.append(xx.shape[1]) or decoder(m, prm, xx, **kw))
    for kind, want in (("before-mask", h[rows, p - 1]), ("mask", h[rows, p])):
        assert torch.allclose(smlmt.features(model, params, x, p, kind, length=smlmt.window_end(p.numpy(), 64)),
                              want, atol=1e-5), kind
    assert seen == [48, 48]  # max p = 40: 41 tokens needed, rounded up to 48 of the 64
    assert smlmt.window_end(np.array([16, 63, 20, 20, 20, 20]), 64) == 64
    assert smlmt.window_end(np.array([16, 20]), 128) == 32


def test_query_gradient_flows_through_the_prototypes_only_with_proto_grad(data_dir):
    grads = {}
    for flag in ("--proto-grad", "--no-proto-grad"):
        a, eps, model, _, head = setup(data_dir, flag)
        ep = eps.train_episode(0, "cpu")
        ep["xq"] = ep["xq"][:, :1].expand_as(ep["xq"]).contiguous()  # queries of one token: no query path to other ids
        meta_step(model, head, eps, ep, a)
        support_only = torch.tensor(sorted(set(ep["xs"].flatten().tolist()) - set(ep["xq"].flatten().tolist())))
        grads[flag] = model.tok_emb.weight.grad[support_only].abs().sum().item()
        assert head["log_scale"].grad is not None and head["log_scale"].grad != 0  # the temperature learns
    assert grads["--proto-grad"] > 0 and grads["--no-proto-grad"] == 0


def test_head_only_inner_loop_runs_the_backbone_once_per_set(data_dir):
    for task in ("smlmt", "pico"):
        a, eps, model, _, head = setup(data_dir, "--task", task, "--inner-steps", 5)
        calls = []
        model.layers[0].register_forward_hook(lambda *_: calls.append(1))
        meta_step(model, head, eps, eps.train_episode(0, "cpu"), a)
        assert len(calls) == 2, task  # support features once (cached for the inner loop and accuracy), query once


def test_episode_head_logits_stay_float32_under_bf16_autocast(data_dir):
    a, eps, model, _, head = setup(data_dir)
    ep = eps.train_episode(0, "cpu")
    support, fast, _, _ = episode_fns(eps, model, head, ep, [])
    f = smlmt.features(model, dict(model.named_parameters()), ep["xs"], ep["ps"], a.episode_feature).detach()
    f = f * head["log_scale"].exp().detach() * 30  # large features, as after training: bf16 would be off by units
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = smlmt.proto_head(f, ep["ys"], a.n_way)
        with fp32("cpu"):
            got = f @ fast["head.w"].T + fast["head.b"]
        logits, _ = support({k: v.detach() for k, v in fast.items()})
    want = f.double() @ fast["head.w"].double().T + fast["head.b"].double()
    assert got.dtype == torch.float32 and logits.dtype == torch.float32
    assert (got.double() - want).abs().max() < 1e-2


def test_meta_start_keeps_the_first_steps_lm_only(data_dir, tmp_path):
    van = run_train(data_dir, tmp_path / "v", "--max-steps", 8, "--eval-every", 4, "--dynamics-every", 0)
    late = run_train(data_dir, tmp_path / "m", "--max-steps", 8, "--eval-every", 4, "--dynamics-every", 0,
                     "--meta", "--meta-start", 4)
    assert late[1]["meta_steps"] == 0 and late[-1]["meta_steps"] > 0
    assert late[1]["val_loss"] == van[1]["val_loss"]  # identical up to the first meta step
    assert config.get_args(["--max-steps", "600"]).meta_start == 300  # the default: half the run


@pytest.mark.parametrize("task", ["pico", "smlmt"])
def test_episode_head_is_checkpointed_and_resumed_exactly(data_dir, tmp_path, task):
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--task", task, "--dynamics-every", 0)
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common)
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6)
    keys = ("val_loss", "meta_loss", "episode_loss_before", "episode_loss_after")
    assert [resumed[-1][k] for k in keys] == [full[-1][k] for k in keys]
    assert all(np.isfinite(full[-1][k]) for k in keys) and full[-1]["meta_steps"] > 0
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["meta_head"]
    b = torch.load(tmp_path / "half" / "ckpt.pt", weights_only=False)["meta_head"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = setup(data_dir, "--task", task)[4].state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a)  # the outer optimiser trained the head


def test_separate_meta_moments_leave_the_lm_optimiser_to_lm_steps_and_resume_exactly(data_dir, tmp_path):
    """--meta-moments separate: the LM steps' AdamW has stepped only on LM steps (its second
    moments never see a meta gradient), the meta AdamW only on meta steps; both are checkpointed,
    so a resumed run is the uninterrupted one. Shared moments step on every step."""
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--dynamics-every", 0)
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common, "--meta-moments", "separate")
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common,
              "--meta-moments", "separate")
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6)
    shared = run_train(data_dir, tmp_path / "shared", "--max-steps", 6, "--eval-every", 3, *common)
    steps = lambda opt: max(int(s["step"]) for s in opt["state"].values())
    ck = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    assert 0 < full[-1]["lm_steps"] < 6
    assert steps(ck["optimizer"]) == full[-1]["lm_steps"] and steps(ck["meta_optimizer"]) == full[-1]["meta_steps"]
    sh = torch.load(tmp_path / "shared" / "ckpt.pt", weights_only=True)
    assert steps(sh["optimizer"]) == 6 and sh["meta_optimizer"] is None
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in full]
    assert full[-1]["val_loss"] != shared[-1]["val_loss"]  # the same batches, other moments


# ----------------------------------------------------------------------------- the inner loop's step (issue: the inner loop must matter)

@pytest.mark.parametrize("task", ["smlmt", "pico", "lm"])
def test_no_inner_step_leaves_the_query_exactly_as_before(data_dir, task):
    for flags in (("--inner-steps", 0), ("--inner-lr", 0)):
        a, eps, model, _, head = setup(data_dir, "--task", task, "--inner-params", "top-1", *flags)
        r = meta.evaluate(model, head, eps, eps.val_episodes(), learners.make(a), "cpu", torch.autocast("cpu", enabled=False))
        assert r["episode_loss_after"] == r["episode_loss_before"] and r["episode_acc_after"] == r["episode_acc_before"]
    a, eps, model, _, head = setup(data_dir, "--task", task, "--inner-params", "top-1", "--inner-lr", 0.3)
    r = meta.evaluate(model, head, eps, eps.val_episodes(), learners.make(a), "cpu", torch.autocast("cpu", enabled=False))
    assert r["episode_loss_after"] != r["episode_loss_before"]  # and a real step does change it


def test_best_temperature_finds_the_scale_that_calibrates_the_logits():
    # labels drawn from softmax(z), logits shown as z / 3: the best temperature is about 3, and it
    # can only lower the loss (T = 1 is on the grid)
    gen = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(8):
        z = 2 * torch.randn(500, 4, generator=gen)
        pairs.append((z / 3, torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)))
    loss, t = best_temperature(pairs)
    assert 2.6 < t < 3.4
    assert loss < np.mean([ce(l, y).item() for l, y in pairs]) - 0.05


def test_learned_step_size_gets_the_first_order_meta_sgd_gradient(data_dir):
    # fast = w - exp(log_lr) * sum_i g_i, so d L_Q / d log_lr = -exp(log_lr) * <grad L_Q(phi), sum_i g_i>
    a, eps, model, _, head = setup(data_dir, "--meta", "--task", "lm", "--inner-params", "top-1", "--learn-inner-lr",
                                   "--inner-lr", 0.05, "--inner-steps", 3)
    learner = learners.make(a)
    inner = learner.learned(learner.fast_names(model, meta.adapted_names(model, learner)) + eps.head_names(head))
    names = meta.adapted_names(model, fomaml("top-1"))
    assert sorted(k.replace("/", ".") for k in inner) == sorted(names)
    with torch.no_grad():  # give each tensor its own step size, so a mix-up between tensors shows
        for i, p in enumerate(inner.values()):
            p.copy_(torch.tensor(np.log(0.05 * (1 + 0.1 * i))))
    ep = eps.train_episode(0, "cpu")
    meta_step(model, head, eps, ep, a, learner)

    params = dict(model.named_parameters())
    lm_loss = lambda fast, x, y: ce(functional_call(model, {**params, **fast}, (x,)), y)
    lr = {n: inner[key(n)].exp().item() for n in names}
    phi = {n: params[n].detach().clone() for n in names}
    total = {n: torch.zeros_like(w) for n, w in phi.items()}
    for _ in range(3):  # the inner loop by hand
        phi = {n: w.requires_grad_() for n, w in phi.items()}
        g = dict(zip(names, torch.autograd.grad(lm_loss(phi, ep["xs"], ep["ys"]), list(phi.values()))))
        phi = {n: (phi[n] - lr[n] * g[n]).detach() for n in names}
        total = {n: total[n] + g[n] for n in names}
    phi = {n: w.requires_grad_() for n, w in phi.items()}
    gq = dict(zip(names, torch.autograd.grad(lm_loss(phi, ep["xq"], ep["yq"]), list(phi.values()))))
    for n in names:
        want = -lr[n] * (gq[n] * total[n]).sum()
        got = inner[key(n)].grad
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-7), n
    assert any(inner[key(n)].grad.abs() > 1e-6 for n in names)


def test_learned_step_sizes_are_logged_checkpointed_and_resumed(data_dir, tmp_path):
    common = (*CUT_AT_3, "--meta", "--meta-start", 0, "--learn-inner-lr", "--inner-params", "top-1", "--dynamics-every", 0)
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 6, "--eval-every", 3, *common)
    run_train(data_dir, tmp_path / "half", "--max-steps", 3, "--decay-steps", 6, "--eval-every", 3, *common)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 6)
    first, last = full[0]["inner_lrs"], full[-1]["inner_lrs"]
    assert set(first) == {"head.w", "head.b", *meta.adapted_names(Transformer(preset("11m", 256, 32)), fomaml("top-1"))}
    assert all(v == pytest.approx(0.1) for v in first.values())  # TINY's --inner-lr
    assert any(abs(last[k] - first[k]) > 1e-4 for k in last)  # the outer optimiser moved them
    assert resumed[-1]["inner_lrs"] == last and resumed[-1]["meta_loss"] == full[-1]["meta_loss"]
    ckpt = torch.load(tmp_path / "half" / "ckpt.pt", weights_only=False)
    assert {k.replace("/", "."): round(v.exp().item(), 6) for k, v in ckpt["inner_lrs"].items()} == last
    with pytest.raises(SystemExit, match="--inner-params top-2: .* a resumed run cannot change"):
        run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 12, "--inner-params", "top-2")


@pytest.mark.parametrize("task", ["lm", "smlmt"])
def test_compiled_decoder_gives_the_eager_meta_step_and_reuses_one_graph(data_dir, task):
    """--compile routes the meta step's decoder passes through torch.compile(functional_call).
    aot_eager traces the same dynamo + AOT-autograd graphs as inductor, without building
    kernels. The loss and meta-gradient must match eager, and new fast weights at each inner
    step must not recompile (the weights are graph inputs): one graph per pass kind."""
    import torch._dynamo
    a, eps, model, _, head = setup(data_dir, "--task", task, "--inner-params", "top-1", "--inner-steps", 3)
    torch.manual_seed(0)  # two blocks, not twelve: the same graphs per pass kind, a sixth of the compiling
    model = Transformer(dataclasses.replace(model.args, n_layer=2))
    ep = eps.train_episode(0, "cpu")
    results = []
    try:
        for backend in (None, "aot_eager"):
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            use_compile(backend)
            model.zero_grad(set_to_none=True)
            loss, _ = meta_step(model, head, eps, ep, a)
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((loss.item(), grads, torch._dynamo.utils.counters["stats"]["unique_graphs"]))
    finally:
        use_compile(None)  # back to plain functional_call for the other tests
        torch._dynamo.reset()
    (eager_loss, eager_g, _), (comp_loss, comp_g, graphs) = results
    assert comp_loss == pytest.approx(eager_loss, rel=1e-5)
    assert eager_g.keys() == comp_g.keys() and len(eager_g) > 0
    for n in eager_g:
        torch.testing.assert_close(comp_g[n], eager_g[n], rtol=1e-4, atol=1e-6)
    assert 1 <= graphs <= 3, f"{graphs} graphs for 3 inner steps: the fast weights recompile"
