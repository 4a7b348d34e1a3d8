"""
A Llama-style decoder in one file: RMSNorm (pre-norm), rotary position embeddings,
grouped-query attention, SwiGLU MLP, no biases, tied input/output embeddings.

The presets are the pico-decoder shapes used by Africa et al. 2025 (arXiv 2508.02189):
12 layers, 12 query heads, 4 key/value heads, SwiGLU hidden = 4 x d_model. Their parameter
and FLOP counts are in plumbing/accounting.py. Variants that change the model (TARP's shifted
matrices, TAMS's choice of ops) do so from their own files in learners/; the loss's chunked
implementation lives in plumbing/linear_ce.py.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing import linear_ce

CL100K_VOCAB = 100_277  # cl100k_base, special tokens included


def pad_vocab(n, multiple=128):
    # matmuls whose vocabulary dimension is a multiple of 64 run faster on GPUs; we round to 128 (so also 64),
    # which gives cl100k's 100,277 -> 100,352 and spare ids above the last real token for the SMLMT mask
    return ((n + multiple - 1) // multiple) * multiple


@dataclass
class ModelArgs:
    vocab_size: int = pad_vocab(CL100K_VOCAB)  # 100,352
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 4
    d_model: int = 96
    hidden_dim: int = 384  # SwiGLU hidden size
    block_size: int = 2048  # longest sequence the rotary tables cover
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6


PRESETS = {"11m": 96, "65m": 384, "181m": 768, "570m": 1536}  # name -> d_model; everything else is shared


def preset(size, vocab_size=pad_vocab(CL100K_VOCAB), block_size=2048):
    if size not in PRESETS:
        raise ValueError(f"--size {size!r} is not a preset; choose one of {', '.join(PRESETS)}")
    d = PRESETS[size]
    return ModelArgs(vocab_size=pad_vocab(vocab_size), d_model=d, hidden_dim=4 * d, block_size=block_size)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32: bf16 sums of squares lose too much precision
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim, block_size, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(block_size).float(), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin, real=None):
    # rotate each (even, odd) pair of channels by a position-dependent angle, so that q.k depends
    # only on the distance between the two positions: (x_even + i x_odd) * (cos + i sin). Eagerly
    # one complex product (one kernel each way, twice as fast as the real form on a CPU); compiled,
    # in real arithmetic, which inductor generates code for (complex tensors fall back to eager)
    xf = x.float().unflatten(-1, (-1, 2))  # (B, nh, T, hd/2, 2)
    if not (torch.compiler.is_compiling() if real is None else real):
        return torch.view_as_real(torch.view_as_complex(xf) * torch.complex(cos, sin)).flatten(-2).type_as(x)
    even, odd = xf[..., 0], xf[..., 1]  # (B, nh, T, hd/2) each
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2).type_as(x)  # (B, nh, T, hd)


class Attention(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv_head = a.n_head, a.n_kv_head
        self.head_dim = a.d_model // a.n_head
        self.q = nn.Linear(a.d_model, a.n_head * self.head_dim, bias=False)
        self.k = nn.Linear(a.d_model, a.n_kv_head * self.head_dim, bias=False)
        self.v = nn.Linear(a.d_model, a.n_kv_head * self.head_dim, bias=False)
        self.o = nn.Linear(a.n_head * self.head_dim, a.d_model, bias=False)

    def forward(self, x, cos, sin, explicit=False):
        B, T, _ = x.shape
        hd = self.head_dim
        q = self.q(x).view(B, T, self.n_head, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv, T, hd)
        v = self.v(x).view(B, T, self.n_kv_head, hd).transpose(1, 2)  # (B, n_kv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if x.device.type == "cpu" and not explicit:
            # the CPU flash kernel serves each key/value head to its query heads itself (no
            # copies), and runs in float32 even under bf16 autocast: at head_dim 8 its bf16
            # backward is 3x slower than its float32 one
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
            return self.o(y.type_as(q).transpose(1, 2).reshape(B, T, self.n_head * hd)), None  # (B, T, d)
        # grouped-query attention: each key/value head serves n_head // n_kv_head query heads
        rep = self.n_head // self.n_kv_head
        k = k.repeat_interleave(rep, dim=1)  # (B, nh, T, hd)
        v = v.repeat_interleave(rep, dim=1)  # (B, nh, T, hd)
        probs = None
        if explicit:  # the slow path, which can hand back the attention probabilities
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf"))
            probs = F.softmax(att.float(), dim=-1).type_as(q)  # (B, nh, T, T), rows sum to 1
            y = probs @ v  # (B, nh, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * hd)  # (B, T, d)
        return self.o(y), probs


class MLP(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(a.d_model, a.hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(a.d_model, a.hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(a.hidden_dim, a.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        self.attn_norm = RMSNorm(a.d_model, a.norm_eps)
        self.attn = Attention(a)
        self.mlp_norm = RMSNorm(a.d_model, a.norm_eps)
        self.mlp = MLP(a)

    def forward(self, x, cos, sin, explicit=False):
        h, probs = self.attn(self.attn_norm(x), cos, sin, explicit)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), probs


class Transformer(nn.Module):
    def __init__(self, a: ModelArgs):
        super().__init__()
        assert a.d_model % a.n_head == 0 and a.n_head % a.n_kv_head == 0
        self.args = a
        self.tok_emb = nn.Embedding(a.vocab_size, a.d_model)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.n_layer))
        self.norm = RMSNorm(a.d_model, a.norm_eps)
        self.lm_head = nn.Linear(a.d_model, a.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one matrix reads and writes tokens
        cos, sin = rope_tables(a.d_model // a.n_head, a.block_size, a.rope_theta)
        # not persistent: derived from the args, so checkpoints and param dicts stay clean
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.w2.weight")):
                # residual projections: scale down so the residual stream does not grow with depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * a.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, hidden=False, trace=None):
        """idx (B, T) token ids. Returns the mean next-token loss when targets (B, T) are given,
        else the logits (B, T, V); or the final hidden states (B, T, d), after the final norm,
        when hidden=True. If `trace` is a dict, it is filled with each
        block's output ('act', a list of (B, T, d)) and attention probabilities ('attn', a list
        of (B, nh, T, T)), which switches attention to the explicit path."""
        B, T = idx.shape
        assert T <= self.args.block_size, f"sequence of {T} tokens > block_size {self.args.block_size}"
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2)
        explicit = trace is not None
        if explicit:
            trace["act"], trace["attn"] = [], []
        x = self.tok_emb(idx)  # (B, T, d)
        for layer in self.layers:
            x, probs = layer(x, cos, sin, explicit)
            if explicit:
                trace["act"].append(x)
                trace["attn"].append(probs)
        x = self.norm(x)  # (B, T, d)
        if hidden:
            return x
        if targets is not None:  # the mean next-token loss, without ever forming the (B*T, V) logits
            return linear_ce.linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(B * T))
        return self.lm_head(x)  # (B, T, V)
