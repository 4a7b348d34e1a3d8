"""model.py: the decoder's defining properties."""
import dataclasses
import os
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.func import functional_call

import model
from model import ModelArgs, Transformer, preset
from plumbing import accounting, linear_ce
from plumbing.accounting import count_params

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw):
    args = dict(vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, d_model=32, hidden_dim=128, block_size=64)
    return ModelArgs(**{**args, **kw})


def test_preset_counts_are_exact_and_match_the_paper_sizes():
    expected = {"11m": 11.3e6, "65m": 64.5e6, "181m": 180.9e6, "570m": 569.4e6}
    for name, approx in expected.items():
        a = preset(name)
        assert a.vocab_size == 100_352 and a.vocab_size % 64 == 0
        d, hd = a.d_model, a.d_model // 12
        per_layer = d * d * 2 + d * 4 * hd * 2 + 3 * d * 4 * d + 2 * d  # q,o + k,v + SwiGLU + norms
        total, non_emb = count_params(a)
        assert non_emb == 12 * per_layer + d
        assert total == non_emb + 100_352 * d
        assert abs(total - approx) / approx < 0.01


def test_built_model_has_the_counted_parameters():
    a = preset("11m")
    m = Transformer(a)
    assert sum(p.numel() for p in m.parameters()) == count_params(a)[0] == 11_258_208
    assert m.lm_head.weight is m.tok_emb.weight  # tied embeddings


def test_accounting_py_prints_one_line_per_preset(capsys):
    runpy.run_path(str(ROOT / "plumbing" / "accounting.py"), run_name="__main__")  # python -m plumbing.accounting, in-process
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].split()[0] == "11m" and "11,258,208" in lines[0] and "1,624,416" in lines[0]


def test_vocab_is_padded_and_unknown_preset_is_refused():
    assert preset("11m", vocab_size=8192).vocab_size == 8192
    assert preset("11m", vocab_size=8193).vocab_size % 64 == 0
    with pytest.raises(ValueError, match="--size"):
        preset("7b")


def test_causal_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 128, (2, 16))
    x2 = x.clone()
    x2[:, 10:] = torch.randint(0, 128, (2, 6))
    for explicit in (False, True):
        kw = {"trace": {}} if explicit else {}
        a, b = m(x, **kw), m(x2, **kw)
        assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5)
        assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Transformer(tiny(n_kv_head=2)).eval()
    mha = Transformer(tiny(n_kv_head=4)).eval()
    sd = gqa.state_dict()
    hd = 32 // 4
    for k, v in list(sd.items()):
        if k.endswith(("attn.k.weight", "attn.v.weight")):  # (n_kv*hd, d): repeat each kv head for its group
            sd[k] = v.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(4 * hd, 32)
    mha.load_state_dict(sd)
    x = torch.randint(0, 128, (2, 12))
    assert torch.allclose(gqa(x), mha(x), atol=1e-5)


def test_fast_and_explicit_attention_agree_and_probs_are_causal():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 128, (3, 20))
    trace = {}
    fast, explicit = m(x), m(x, trace=trace)
    assert torch.allclose(fast, explicit, atol=1e-5)
    for p in trace["attn"]:
        assert p.shape == (3, 4, 20, 20)
        assert torch.allclose(p.sum(-1), torch.ones(3, 4, 20), atol=1e-5)
        assert (p.triu(diagonal=1) == 0).all()
    assert len(trace["act"]) == 2 and trace["act"][0].shape == (3, 20, 32)


def test_hidden_states_are_after_the_final_norm():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x = torch.randint(0, 128, (2, 8))
    h = m(x, hidden=True)
    assert h.shape == (2, 8, 32)
    assert torch.allclose(h.pow(2).mean(-1), torch.ones(2, 8), atol=1e-2)  # RMSNorm with unit gain (eps aside)
    assert torch.allclose(m.lm_head(h), m(x), atol=1e-5)


def test_functional_call_with_own_params_equals_forward():
    torch.manual_seed(0)
    m = Transformer(tiny()).eval()
    x, y = torch.randint(0, 128, (2, 10)), torch.randint(0, 128, (2, 10))
    params = dict(m.named_parameters())
    assert torch.equal(functional_call(m, params, (x, y)), m(x, y))
    assert torch.equal(functional_call(m, params, (x,)), m(x))
    h = functional_call(m, params, (x,), {"hidden": True})
    assert torch.equal(h, m(x, hidden=True))


def test_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    m = Transformer(tiny())
    x = torch.randint(0, 128, (4, 16))
    loss = m(x, torch.randint(0, 128, (4, 16))).item()  # targets unrelated to inputs
    assert abs(loss - torch.log(torch.tensor(128.0)).item()) < 0.3


def test_flops_per_token_counts_backward_as_twice_forward():
    a = preset("11m", vocab_size=8192)
    total, non_emb = count_params(a)
    fwd = accounting.flops_per_token(a, 256, backward=False)
    assert fwd == 2 * total + 4 * 12 * 96 * 256
    assert accounting.flops_per_token(a, 256) == 3 * fwd
    assert accounting.flops_per_token(a, 256, backward=False, lm_head=False) == 2 * non_emb + 4 * 12 * 96 * 256
    assert accounting.peak_flops("cpu") is None


def test_peak_flops_are_looked_up_by_the_exact_device_name():
    peak = lambda name: accounting.peak_flops("cuda", name)
    assert peak("NVIDIA H100 80GB HBM3") == 989e12 and peak("NVIDIA H100 PCIe") == 756e12  # not the SXM figure
    assert peak("NVIDIA L40S") == 362e12 and peak("NVIDIA L40") == 181e12 and peak("NVIDIA L4") == 121e12  # not L4's
    assert peak("NVIDIA H100 prototype") is None and peak("Tesla T4") is None  # unknown: no MFU rather than a wrong one


def test_rope_preserves_norms_and_is_relative():
    cos, sin = model.rope_tables(16, 64, 10000.0)
    # the pairs are channels (0, 1), (2, 3), ...: checkpoints depend on this convention
    e0 = torch.zeros(1, 1, 1, 16)
    e0[..., 0] = 1.0
    assert torch.allclose(model.apply_rope(e0, cos[5:6], sin[5:6])[0, 0, 0, :2], torch.stack([cos[5, 0], sin[5, 0]]))
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    at = lambda x, p: model.apply_rope(x, cos[p : p + 1], sin[p : p + 1])
    assert torch.allclose(at(q, 7).norm(), q.norm(), atol=1e-5)  # a rotation
    dot = lambda i, j: (at(q, i) * at(k, j)).sum()
    assert torch.allclose(dot(10, 3), dot(30, 23), atol=1e-4)  # only the distance matters
    assert not torch.allclose(dot(10, 3), dot(10, 4), atol=1e-3)


def test_real_rope_equals_the_complex_product_within_float_rounding():
    # the compiled form (real arithmetic) against the eager one (a complex product per pair)
    cos, sin = model.rope_tables(16, 64, 10000.0)
    x = torch.randn(2, 64, 3, 16).transpose(1, 2)  # (B, nh, T, hd), strided as q and k are
    real, cplx = model.apply_rope(x, cos, sin, real=True), model.apply_rope(x, cos, sin, real=False)
    assert real.dtype == x.dtype and torch.allclose(real, cplx, atol=1e-6, rtol=1e-6)
    assert torch.equal(model.apply_rope(x, cos, sin), cplx) and not torch.equal(real, x)  # eager: complex; it rotates


def test_linear_cross_entropy_equals_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    x, w = torch.randn(37, 16, requires_grad=True), torch.randn(64, 16, requires_grad=True)
    y = torch.randint(0, 64, (37,))
    y[[3, 20]] = -1  # ignored rows
    ref = F.cross_entropy(x @ w.t(), y, ignore_index=-1)
    ref_g = torch.autograd.grad(ref, (x, w))
    for rows in (5, 37, 128):  # chunks of 5 rows (the last one 2), one chunk, one short chunk
        loss = linear_ce.linear_cross_entropy(x, w, y, chunk_floats=64 * rows, min_rows=1)
        assert torch.allclose(loss, ref, atol=1e-6)
        for got, want in zip(torch.autograd.grad(2 * loss, (x, w)), ref_g):  # backward scales by the upstream grad
            assert torch.allclose(got, 2 * want, atol=1e-6)
    none = linear_ce.linear_cross_entropy(x, w, torch.full((37,), -1))
    assert none.item() == 0 and all((g == 0).all() for g in torch.autograd.grad(none, (x, w)))
    with torch.no_grad():  # evaluation: the same loss, no gradients formed
        assert torch.allclose(linear_ce.linear_cross_entropy(x, w, y), ref, atol=1e-6)


def test_the_gpu_chunking_run_on_a_cpu_equals_cross_entropy_of_the_full_logits():
    """The GPU's path (train.py on CUDA): cl100k's padded vocabulary, the GPU's chunk of
    CHUNK_FLOATS["cuda"] logits (668 rows), so this batch takes a full chunk and a short one.
    Equal up to float32 rounding. The gradient of x sums 100,352 terms that cancel: against a
    float64 reference both this and F.cross_entropy are off by about 2e-4 of its largest entry."""
    V = model.pad_vocab(model.CL100K_VOCAB)
    rows = linear_ce.CHUNK_FLOATS["cuda"] // V
    torch.manual_seed(0)
    x, w = torch.randn(rows + 13, 4, requires_grad=True), torch.randn(V, 4, requires_grad=True)
    y = torch.randint(0, V, (rows + 13,))
    y[[5, rows + 2]] = -1
    ours = linear_ce.linear_cross_entropy(x, w, y, chunk_floats=linear_ce.CHUNK_FLOATS["cuda"])
    gx, gw = torch.autograd.grad(ours, (x, w))
    ref = F.cross_entropy(x @ w.t(), y, ignore_index=-1)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=0)
    for got, want in zip((gx, gw), torch.autograd.grad(ref, (x, w))):
        assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    assert (gx[[5, rows + 2]] == 0).all() and (gx[6] != 0).all()  # ignored rows get no gradient


def test_cpu_loss_and_gradients_under_bf16_autocast_stay_near_float32(monkeypatch):
    torch.manual_seed(0)
    m = Transformer(tiny(n_layer=2, vocab_size=512, d_model=64, n_head=8, n_kv_head=2, hidden_dim=256))
    x, y = torch.randint(0, 512, (4, 32)), torch.randint(0, 512, (4, 32))
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, *r, **kw: seen.append((q.dtype, torch.is_autocast_enabled("cpu"))) or sdpa(q, *r, **kw))
    loss32 = m(x, y)
    g32 = torch.autograd.grad(loss32, list(m.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = m(x, y)
    g16 = torch.autograd.grad(loss16, list(m.parameters()))
    assert seen[-1] == (torch.float32, False)  # the CPU attention kernel runs in float32 even under autocast
    assert loss16.dtype == torch.float32 and abs(loss16.item() - loss32.item()) < 0.01
    err = sum((a - b).pow(2).sum() for a, b in zip(g16, g32)).sqrt() / sum(b.pow(2).sum() for b in g32).sqrt()
    assert err < 0.02  # bf16 matmuls: about 0.6% at the 11m model's shapes


def compiled_step_equals_eager(backend, grads):
    """The 11m decoder's LM step (the loss, and with grads its gradients), and a meta step's decoder
    pass with fast weights (functional_call, as tasks.base.decoder runs it), compiled with
    `backend`: one graph each, no graph break but the chunked loss's deliberate one (its ~200-chunk
    loop would unroll into the graph; it runs eagerly), and the eager numbers. Two of its 12 layers:
    every layer runs the same code, and dynamo traces each one again (12 cost 3 s more)."""
    linear_ce.keep_out_of_compiled_graphs()  # as train.py --compile does
    torch.manual_seed(0)
    m = Transformer(dataclasses.replace(preset("11m", 256, 32), n_layer=2))
    x, y = torch.randint(0, 256, (4, 32)), torch.randint(0, 256, (4, 32))
    fast = {n: p.detach() + 0.01 for n, p in m.named_parameters() if n.startswith("layers.1.")}  # adapted weights
    weights = {**dict(m.named_parameters()), **fast}
    with torch.set_grad_enabled(grads):
        want = m(x, y)
        want_g = torch.autograd.grad(want, list(m.parameters())) if grads else []
        want_h = functional_call(m, weights, (x,), {"hidden": True})
        torch._dynamo.reset()
        counters.clear()
        got = torch.compile(m, backend=backend)(x, y)
        got_g = torch.autograd.grad(got, list(m.parameters())) if grads else []
        got_h = torch.compile(functional_call, backend=backend)(m, weights, (x,), {"hidden": True})
    breaks = [r for r in counters["graph_break"] if "linear_cross_entropy" not in r]
    assert not breaks and counters["stats"]["unique_graphs"] == 2, (breaks, dict(counters["stats"]))
    assert got.item() == pytest.approx(want.item(), abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_g, want_g))
    lm_loss = lambda h: F.cross_entropy((h @ m.lm_head.weight.T).flatten(0, 1), y.flatten())  # --task lm's inner loss
    assert lm_loss(got_h).item() == pytest.approx(lm_loss(want_h).item(), abs=1e-5)
    assert torch.allclose(got_h, want_h, atol=1e-4)  # the features smlmt and pico read (values ~1)


def test_the_decoder_compiles_without_a_graph_break_and_gives_the_eager_numbers():
    """What would silently cost speed on a GPU, caught on a CPU: a graph break in the decoder's
    forward (complex tensors, data-dependent Python, host reads). Through dynamo and AOT autograd
    (aot_eager, the front half of inductor), in seconds."""
    compiled_step_equals_eager("aot_eager", grads=False)


@pytest.mark.skipif(not os.environ.get("METALM_SLOW_TESTS"), reason="inductor's C++ compile takes 25-50 s on 2 cores; "
                    "METALM_SLOW_TESTS=1 runs it")
def test_inductor_on_the_cpu_gives_the_eager_numbers_and_gradients():
    compiled_step_equals_eager("inductor", grads=True)
