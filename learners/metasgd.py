"""
First-order Meta-SGD (Li et al. 2017), --learn-inner-lr: one learnable log step size per
adapted tensor, starting at --inner-lr. The outer optimiser trains it (no weight decay), the
checkpoint keeps it (ckpt["inner_lrs"]), and log.jsonl shows it at every eval. It enters the
graph only in inner_loop's last line, theta - lr * sum_i g_i, so the query loss gives it
d L_Q / d lr = -<grad L_Q(phi_n), sum_i g_i>: first order, like the rest. FLOPs: FOMAML's.
"""
import math

import torch
import torch.nn as nn

from learners import Variant
from plumbing.errors import UserError


def key(name):
    return name.replace(".", "/")  # a ParameterDict key cannot hold dots


class MetaSGD(Variant):
    """first-order Meta-SGD, learned inner step sizes"""
    HOOKS = ("learned", "step_size", "report")
    EXAMPLE = ("--learn-inner-lr",)

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--learn-inner-lr", action="store_true",
                       help="learn one log step size per adapted tensor, starting at --inner-lr")

    @classmethod
    def active(cls, a):
        return a.meta and a.learn_inner_lr

    @classmethod
    def check(cls, a):
        if a.learn_inner_lr and a.inner_lr <= 0:
            raise UserError("--learn-inner-lr learns log step sizes, so --inner-lr must be > 0")

    def __init__(self, a):
        super().__init__(a)
        self.lrs = nn.ParameterDict()

    def learned(self, names):
        self.lrs = nn.ParameterDict({key(n): nn.Parameter(torch.tensor(math.log(self.a.inner_lr))) for n in names})
        return self.lrs

    def step_size(self, name):
        return self.lrs[key(name)].exp() if key(name) in self.lrs else self.a.inner_lr

    def report(self):
        return {"inner_lrs": {k.replace("/", "."): round(v.exp().item(), 6) for k, v in self.lrs.items()}}, ""
