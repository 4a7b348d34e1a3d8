"""
An AdamW inner loop, --inner-opt adamw (the next-token MAML proposal's inner optimiser): step i
moves each tensor by lr * d_i with d_i = s_i * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w),
torch's AdamW to the last detail, its moments fresh in each episode. s_i is the inner schedule:
1 (constant), or a linear warmup over the first tenth of the steps and a cosine to 0. First
order as SGD: d_i is computed from constants, so the meta-gradient is still grad L_Q at the
adapted weights. AdamW divides each gradient by its own scale, which is what a task's step
units do for SGD, so it takes none. FLOPs: FOMAML's (the moments are elementwise).
"""
import math

import torch

from learners import Variant
from plumbing.errors import UserError


class AdamW(Variant):
    """an AdamW inner loop"""
    HOOKS = ("direction", "units")
    EXAMPLE = ("--inner-opt", "adamw")
    DEFAULTS = {"inner_lr": 3e-4}  # the sweep in results/README.md (2026-12-02), for every task

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--inner-opt", default="sgd", choices=["sgd", "adamw"],
                       help=f"inner optimiser: SGD, or AdamW with fresh moments per episode (betas 0.9, 0.999; default "
                            f"--inner-lr {cls.DEFAULTS['inner_lr']:g}). Both first order")
        g.add_argument("--inner-schedule", default="constant", choices=["constant", "cosine"],
                       help="--inner-opt adamw: the step over the inner steps (cosine: linear warmup over the first "
                            "tenth, then cosine to 0)")
        g.add_argument("--inner-weight-decay", type=float, default=0.01, help="--inner-opt adamw: decoupled weight decay")

    @classmethod
    def active(cls, a):
        return a.inner_opt == "adamw"

    @classmethod
    def check(cls, a):
        if a.inner_weight_decay < 0:
            raise UserError(f"--inner-weight-decay {a.inner_weight_decay}: must be at least 0")

    def units(self, task, ep):
        return {}

    def direction(self):
        return adamw_direction(self.a.inner_steps, self.a.inner_weight_decay, self.a.inner_schedule)


def adamw_direction(steps, weight_decay=0.0, schedule="constant", betas=(0.9, 0.999), eps=1e-8):
    """direction(i, phi, grads) for inner_loop; a new closure, so fresh moments, per episode."""
    state, (b1, b2) = {}, betas
    warm = max(1, steps // 10)
    scale = lambda i: 1.0 if schedule == "constant" else min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / steps))

    def direction(i, phi, grads):
        out = []
        for (n, w), g in zip(phi.items(), grads):
            m, v = state.get(n, (torch.zeros_like(g), torch.zeros_like(g)))
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            state[n] = (m, v)
            adam = (m / (1 - b1 ** (i + 1))) / ((v / (1 - b2 ** (i + 1))).sqrt() + eps)
            out.append(scale(i) * (adam + weight_decay * w))
        return out

    return direction
