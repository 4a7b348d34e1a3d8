"""
TARP, --tarp static|dynamic (Hou et al. 2022, "Meta-Learning the Difference"): every block
matrix gains a task-adaptive shift, y = W0 x + V S U^T x, with U (d_in, r), V (d_out, r) of
rank r = --inner-rank and S an r x r matrix, learned (static) or made from the token itself by
a bias-free map (dynamic: S(x) = reshape(W_S x, r, r), as in the authors' code). S (or W_S)
starts at zero, so the model starts as the plain one. The inner loop adapts U, V and S / W_S of
the blocks --inner-params names; the outer loop learns them and W0. (Their scaled form,
W = Phi1 * W0 + Phi2, is not built.) FLOPs: FOMAML's formula over the larger decoder (the
shift's parameters are in the run's parameter count).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from learners import Variant
from plumbing.errors import UserError


class TARPLinear(nn.Module):
    """A block matrix with a shift. It takes over the plain layer's weight (same name, same
    values), so a TARP model is the plain model at the same seed plus U, V, S."""

    def __init__(self, base: nn.Linear, rank, kind):
        super().__init__()
        d_out, d_in = base.weight.shape
        self.rank, self.dynamic = rank, kind == "dynamic"
        self.weight = base.weight
        at = {"device": base.weight.device}
        self.tarp_u = nn.Parameter(torch.zeros(d_in, rank, **at))  # random directions, drawn in TARP.change_model
        self.tarp_v = nn.Parameter(torch.zeros(d_out, rank, **at))
        self.tarp_s = nn.Parameter(torch.zeros(rank * rank if self.dynamic else rank, d_in if self.dynamic else rank, **at))

    def forward(self, x):
        h = x @ self.tarp_u  # (..., r)
        if self.dynamic:
            s = (x @ self.tarp_s.T).unflatten(-1, (self.rank, self.rank))  # (..., r, r): one S per token
            h = (s @ h.unsqueeze(-1)).squeeze(-1)  # (..., r)
        else:
            h = h @ self.tarp_s.T  # (..., r)
        return F.linear(x, self.weight) + h @ self.tarp_v.T  # (..., d_out)


class TARP(Variant):
    """Meta-Learning the Difference's TARP, shifted block matrices"""
    HOOKS = ("change_model", "adaptable")
    EXAMPLE = ("--tarp", "static", "--inner-rank", "2")

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--tarp", default=None, choices=["static", "dynamic"],
                       help="every block matrix gains a shift V S U^T of rank --inner-rank, S learned (static) or made "
                            "from each token (dynamic); U, V and S are learned in the outer loop, and the inner loop "
                            "adapts them, not the matrices")

    @classmethod
    def active(cls, a):
        return bool(a.tarp)

    @classmethod
    def check(cls, a):
        if a.tarp and (a.inner_rank < 1 or a.inner_params == "head" or a.inner_rank_learn_v):
            raise UserError(f"--tarp {a.tarp} needs --inner-rank R >= 1 (the shift's rank) and --inner-params top-K or "
                            "all (the blocks whose shifts adapt); --inner-rank-learn-v belongs to the cheap variant "
                            "without --tarp")

    def change_model(self, model):
        for block in model.layers:
            for parent in (block.attn, block.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, name, TARPLinear(child, self.a.inner_rank, self.a.tarp))
        for name, p in model.named_parameters():  # after the plain init, so W0 is the plain model's at the same seed
            if name.endswith(("tarp_u", "tarp_v")):  # unit-scale random directions; the shift starts at 0 via S
                nn.init.normal_(p, mean=0.0, std=1.0 / math.sqrt(p.shape[0]))

    def adaptable(self, model, names):
        return [n for n in names if ".tarp_" in n]  # W0 and the norms are learned in the outer loop alone
