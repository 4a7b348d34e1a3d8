"""
TAMS, --tams (Hou et al. 2022, "Meta-Learning the Difference"), in miniature: each block gets a
choice of op on its MLP path, {its SwiGLU, skip, a rank-16 linear}. Per episode a controller
d -> 128 -> 3 per block maps the task embedding z (the support set's mean token embedding) to
each block's op logits; the forward pass uses the argmax and the gradient reaches the
controller through the softmax (straight-through). The controller is trained in the outer
loop, never adapted; LM steps use the SwiGLU. FLOPs: FOMAML's formula over the larger decoder
(every op runs, so each gets a gradient).
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn

from learners import Variant
from model import Block

RANK = 16  # the rank of the low-rank candidate op


class TAMSBlock(Block):
    """A block whose MLP path is the episode's op. arch (3,): a one-hot over {SwiGLU, skip,
    low-rank} with a straight-through gradient, set by TAMS.episode; None outside an episode."""
    arch = None

    def forward(self, x, cos, sin, explicit=False):
        if self.arch is None:
            return super().forward(x, cos, sin, explicit)
        h, probs = self.attn(self.attn_norm(x), cos, sin, explicit)
        x = x + h
        m = self.mlp_norm(x)
        return x + self.arch[0] * self.mlp(m) + self.arch[2] * self.lowrank(m), probs  # skip adds nothing


class TAMS(Variant):
    """Meta-Learning the Difference's TAMS, a choice of ops per episode"""
    HOOKS = ("change_model", "adaptable", "episode", "observe", "report")
    EXAMPLE = ("--tams",)
    ORDER = 1  # its model change after TARP's, whose random draws come first

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--tams", action="store_true",
                       help="per episode a controller maps the support set's mean token embedding to one op per block "
                            "on the MLP path (its SwiGLU, skip, or a rank-16 linear), straight-through; trained in the "
                            "outer loop, not adapted. LM steps use the SwiGLU")

    @classmethod
    def active(cls, a):
        return a.tams

    def __init__(self, a):
        super().__init__(a)
        self.chosen = []

    def change_model(self, model):
        d, L = model.args.d_model, model.args.n_layer
        for layer in model.layers:  # the candidate low-rank op, initialised as a residual projection is
            layer.__class__ = TAMSBlock  # the same weights under the same names, a forward that picks the op
            layer.lowrank = nn.Sequential(nn.Linear(d, RANK, bias=False), nn.Linear(RANK, d, bias=False))
            nn.init.normal_(layer.lowrank[0].weight, std=0.02)
            # not zero: an op whose output is 0 gives its logit no straight-through gradient, and
            # the controller never learns to prefer it (measured: results/README.md, 2026-12-02)
            nn.init.normal_(layer.lowrank[1].weight, std=0.02 / math.sqrt(2 * L))
        model.controller = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 3 * L))
        nn.init.zeros_(model.controller[2].weight)  # every block starts on its own SwiGLU (logit +1)
        with torch.no_grad():
            model.controller[2].bias.copy_(torch.tensor([1.0, 0.0, 0.0]).repeat(L))

    def adaptable(self, model, names):
        return [n for n in names if not n.startswith("controller.")]  # TAMS chooses, never adapts

    @contextmanager
    def episode(self, model, ep):
        """The episode's choice of op per block, made once from the starting controller."""
        arch = choose(model, ep["xs"])  # (L, 3)
        for i, layer in enumerate(model.layers):
            layer.arch = arch[i]
        try:
            yield ep | {"arch": arch}
        finally:
            for layer in model.layers:
                layer.arch = None

    def observe(self, ep):
        self.chosen.append(ep["arch"].argmax(-1))  # (L,) the op of each block

    def report(self):
        """Per block, how many val episodes chose each op (SwiGLU, skip, low-rank)."""
        if not self.chosen:
            return {}, ""
        ops = torch.stack(self.chosen)  # (episodes, L)
        self.chosen = []
        counts = [[int((ops[:, i] == o).sum()) for o in range(3)] for i in range(ops.shape[1])]
        line = "tams ops per block: " + "".join("SkL"[max(range(3), key=c.__getitem__)] for c in counts)
        return {"tams_choices": counts}, line


def choose(model, idx):
    """Each block's op, (L, 3) one-hot rows with the softmax's gradient (straight-through). z is
    detached: the search steers the controller, not the embeddings."""
    z = model.tok_emb(idx).mean((0, 1)).detach()  # (d,)
    soft = model.controller(z).view(model.args.n_layer, 3).softmax(-1)  # (L, 3)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)  # one-hot; F.one_hot checks values on the host
    return (hard - soft).detach() + soft
