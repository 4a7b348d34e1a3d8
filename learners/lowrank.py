"""
Low-rank deltas, --inner-rank R (the cheap form of Meta-Learning the Difference, Hou et al.
2022): each adapted decoder matrix W (d_out x d_in) adapts as W + U V. U (d_out x R) starts at
zero, so the adapted model starts as the model; V (R x d_in) has orthonormal rows drawn for
this episode (its seed), so a step on U is the full step on W projected onto R input
directions: dL/dU = G V^T, dW = -lr G V^T V, and --inner-lr means what it means for full-rank
adaptation. The meta-gradient reaches W through compose. FLOPs: FOMAML's (the products U V
are small next to the passes). With --tarp, --inner-rank is the rank of TARP's shifts instead.
"""
import torch

from learners import Variant
from plumbing.errors import UserError


class LowRank(Variant):
    """the inner loop adapts low-rank deltas of the matrices"""
    HOOKS = ("reparam", "fast_names")
    EXAMPLE = ("--inner-rank", "2")

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--inner-rank", type=int, default=0,
                       help="adapt each adapted backbone matrix W as W + U V of rank R (U from zero, V fixed random "
                            "directions per episode); 0 = adapt W itself. With --tarp: the rank of its shifts")
        g.add_argument("--inner-rank-learn-v", action="store_true", help="with --inner-rank: adapt V as well as U")

    @classmethod
    def active(cls, a):
        return a.inner_rank > 0 and not a.tarp  # with --tarp the rank is the shift's, and the shift is what adapts

    @classmethod
    def check(cls, a):
        if a.inner_rank < 0:
            raise UserError(f"--inner-rank {a.inner_rank}: must be at least 0")
        if cls.active(a) and a.inner_params == "head":
            raise UserError(f"--inner-rank {a.inner_rank}: a rank >= 1 adapts backbone matrices, so it needs "
                            "--inner-params top-K or all (0 = full-rank)")
        if a.inner_rank_learn_v and not a.inner_rank:
            raise UserError("--inner-rank-learn-v needs --inner-rank R >= 1")

    def fast_names(self, model, names):
        matrix = lambda n: model.get_parameter(n).dim() == 2
        return [m for n in names for m in ([n + ".U"] + [n + ".V"] * self.a.inner_rank_learn_v if matrix(n) else [n])]

    def reparam(self, fast, seed):
        """The tensors the inner loop adapts (U, and V with --inner-rank-learn-v, in place of W;
        vectors and the head as before), and compose(f): the fast weights W + U V. R is capped
        at min(d_out, d_in)."""
        start, base, V = {}, {}, {}
        gen = None
        for n, w in fast.items():
            if n.startswith("head.") or w.dim() != 2:
                start[n] = w
                continue
            r = min(self.a.inner_rank, *w.shape)
            gen = gen or torch.Generator(w.device).manual_seed(seed)  # drawn where the weights are: no host copy
            q, _ = torch.linalg.qr(torch.randn(w.shape[1], r, generator=gen, device=w.device))  # (d_in, r), orthonormal
            base[n], V[n] = w, q.T.to(w.dtype)  # V: (r, d_in)
            start[n + ".U"] = torch.zeros(w.shape[0], r, device=w.device, dtype=w.dtype)  # (d_out, r)
            if self.a.inner_rank_learn_v:
                start[n + ".V"] = V[n]

        def compose(f):
            full = {n: w for n, w in f.items() if not n.endswith((".U", ".V"))}
            return full | {n: w + f[n + ".U"] @ f.get(n + ".V", V[n]) for n, w in base.items()}  # (d_out, d_in)

        return start, compose
