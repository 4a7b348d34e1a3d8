"""
Learning-dynamics instruments: effective rank and attention-head entropy, measured during
training on one fixed probe batch from the val split (Africa et al. 2025 claim (iii): both rise,
then fall, "diversify, then compress").

Effective rank (Roy & Vetterli 2007): ER(M) = exp(H(p)), p = sigma / sum(sigma) over the singular
values of M. It is 1 for a rank-1 matrix, n for an n x n identity, and blind to scale; in
between it counts how many directions carry the matrix's energy.

Head entropy: for each query position, -sum_k a_qk ln a_qk over the keys it may attend to. A
head that attends uniformly to its q+1 visible keys has ln(q+1), a head that looks at one
token has 0; dividing by ln(q+1) makes positions (and heads) comparable on [0, 1].
"""
import json
import time

import torch
from tqdm import tqdm

WEIGHTS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o", "w1": "mlp.w1", "w2": "mlp.w2", "w3": "mlp.w3"}


def effective_rank(m):
    """exp of the entropy of the normalised singular values; zero singular values add nothing."""
    s = torch.linalg.svdvals(m.detach().float())
    total = s.sum()
    if total <= 0:
        return 0.0  # the zero matrix: rank 0, and nothing to normalise
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def head_entropy(probs):
    """probs (B, nh, T, T) causal attention -> (entropy, normalised entropy), each (nh,), averaged
    over batch and query positions. Position 0 sees one key (ln 1 = 0) and is left out of the
    normalised mean."""
    p = probs.detach().float()
    ent = -torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p)).sum(-1)  # (B, nh, T)
    T = p.shape[-1]
    visible = torch.arange(1, T + 1, device=p.device, dtype=torch.float32)  # keys query q may see
    norm = ent[..., 1:] / visible[1:].log()  # (B, nh, T-1)
    return ent.mean(dim=(0, 2)), norm.mean(dim=(0, 2))


def measure(model, x, y):
    """All instruments on one batch: one explicit-attention forward, one LM-loss gradient taken
    with autograd.grad (so no .grad of the training run is touched)."""
    trace = {}
    with torch.enable_grad():
        loss = model(x, y, trace=trace)
        names = [f"layers.{i}.{w}.weight" for i in range(model.args.n_layer) for w in WEIGHTS.values()]
        params = dict(model.named_parameters())
        grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    row = {"er_act": [], "er_weight": {k: [] for k in WEIGHTS}, "er_grad": {k: [] for k in WEIGHTS},
           "attn_entropy": [], "attn_entropy_norm": []}
    for i, (act, probs) in enumerate(zip(trace["act"], trace["attn"])):
        row["er_act"].append(effective_rank(act.reshape(-1, act.shape[-1])))  # (B*T, d)
        for short, name in WEIGHTS.items():
            row["er_weight"][short].append(effective_rank(params[f"layers.{i}.{name}.weight"]))
            row["er_grad"][short].append(effective_rank(grads[f"layers.{i}.{name}.weight"]))
        ent, norm = head_entropy(probs)
        row["attn_entropy"].append(ent.tolist())
        row["attn_entropy_norm"].append(norm.tolist())
    return row


class Recorder:
    """Measures when train.py asks and appends to OUT/dynamics.jsonl. The probe batch is chosen
    once and travels in the checkpoint, so a resumed run probes the same tokens."""

    def __init__(self, probe, path, ctx):
        self.probe, self.path, self.ctx = probe, path, ctx

    def measure(self, model, step):
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        with self.ctx:
            row = {"step": step, **measure(model, *self.probe)}
        row["measure_ms"] = 1000 * (time.perf_counter() - t0)  # what the instruments cost
        model.train(was_training)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        ent = [sum(h) / len(h) for h in row["attn_entropy_norm"]]
        tqdm.write(f"dynamics step {step}: ER(act) per layer " + " ".join(f"{v:.1f}" for v in row["er_act"])
              + " | head entropy (norm) per layer " + " ".join(f"{v:.2f}" for v in ent))
        return row
