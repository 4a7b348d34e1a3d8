"""
Accounting: a decoder's parameter and FLOP counts from its ModelArgs alone (no model is built),
or from a built one (whose variants may have added weights: learners/), and the peak FLOP/s of
the GPU it runs on, for MFU. Beside the model, not in it.

    python accounting.py      # the parameter count of every preset (full cl100k vocabulary)
"""
import torch

import meta
from model import PRESETS, ModelArgs, preset


def count_params(a: ModelArgs):
    """Exact parameter counts from the arithmetic alone (no model is built)."""
    hd = a.d_model // a.n_head
    attn = a.d_model * hd * (2 * a.n_head + 2 * a.n_kv_head)  # q, o + k, v
    mlp = 3 * a.d_model * a.hidden_dim
    per_layer = attn + mlp + 2 * a.d_model  # + two RMSNorm weights
    embedding = a.vocab_size * a.d_model  # tied, so counted once
    non_embedding = a.n_layer * per_layer + a.d_model  # + final norm
    return embedding + non_embedding, non_embedding


def count_model(model):
    """(total, non-embedding) parameters of a built decoder, a variant's added weights included
    (TARP's shifts, TAMS's ops and controller); the tied embedding counted once."""
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.tok_emb.weight.numel()


def flops_per_token(a: ModelArgs, T, backward=True, lm_head=True, non_emb=None):
    """Matmul FLOPs per token for a sequence of length T (the PaLM / nanoGPT estimate):
    2 FLOPs per parameter per token forward (x3 with backward), plus attention scores
    and weighted sums (2 * 2 * n_layer * d_model * T forward, causal masking ignored).
    non_emb: the built model's non-embedding count (count_model), when a variant added weights."""
    non_emb = count_params(a)[1] if non_emb is None else non_emb
    n = non_emb + (a.vocab_size * a.d_model if lm_head else 0)  # the lookup itself is free
    fwd = 2 * n + 4 * a.n_layer * a.d_model * T
    return 3 * fwd if backward else fwd


def step_flops(model, a, task, learner, world=1):
    """{"lm": FLOPs of one LM step, "meta": of one meta step (meta.step_flops)}, a step being world
    size x --grad-accum micro-batches or episodes; the built model's count includes a variant's
    weights."""
    n_micro, non_emb = world * a.grad_accum, count_model(model)[1]
    per_token = lambda L, backward=True, lm_head=False: flops_per_token(model.args, L, backward, lm_head, non_emb)
    return {"lm": flops_per_token(model.args, a.block_size, non_emb=non_emb) * a.batch_size * a.block_size * n_micro,
            "meta": meta.step_flops(task, learner, per_token) * n_micro if a.meta else 0}


PEAK_FLOPS = {  # dense bf16 tensor-core peaks (datasheets), FLOP/s, by the name torch.cuda reports
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 SXM": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12,
    "NVIDIA L40": 181e12, "NVIDIA A10": 125e12, "NVIDIA GeForce RTX 4090": 165e12,
}


def peak_flops(device, name=None):
    """Peak bf16 FLOP/s of the current CUDA device, by its exact name, or None when the name is
    not in PEAK_FLOPS (then no MFU is printed: a wrong peak is worse than none)."""
    if name is None:
        if device != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    return PEAK_FLOPS.get(name.strip())


if __name__ == "__main__":
    for name in PRESETS:
        total, non_emb = count_params(preset(name))
        print(f"{name:>5}  total {total:>13,}  non-embedding {non_emb:>13,}")
