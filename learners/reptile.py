"""
Reptile (Nichol et al. 2018), --outer reptile: no query set of its own. The inner loop runs on
support and query together, phi = theta - lr * sum_i g_i, and the outer gradient of each
persistent weight it adapted is (theta - phi) / (lr * k), k = --inner-steps. Dividing by the
inner path length makes that the mean of the k inner gradients: the same scale as an LM
gradient, whatever --inner-lr and --inner-steps, so the outer lr, the gradient clipping and
the optimiser's moments shared with LM steps mean what they mean for an LM step. (Reptile's
own epsilon is the outer lr.) FLOPs: the start pass without a graph, then k steps over support
and query together, and no outer pass.
"""
import torch
import torch.nn as nn

import tasks
from learners import Variant
from meta import adapt, adapted_names
from plumbing.errors import UserError


class Reptile(Variant):
    """Reptile's outer rule"""
    HOOKS = ("outer", "flops")
    EXAMPLE = ("--outer", "reptile")

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--outer", default="fomaml", choices=["fomaml", "reptile"],
                       help="outer rule: first-order MAML (query loss of the adapted weights) or Reptile (move toward "
                            "the weights adapted on support + query)")

    @classmethod
    def active(cls, a):
        return a.outer == "reptile"

    @classmethod
    def check(cls, a):
        if not cls.active(a):
            return
        if a.inner_params == "head" and not tasks.get(a.task).PERSISTENT_HEAD:
            raise UserError(f"--outer reptile moves the weights the inner loop adapts, and --task {a.task}'s head is "
                            "rebuilt every episode: use --inner-params top-K or all")
        if a.inner_steps < 1 or a.inner_lr <= 0:
            raise UserError("--outer reptile moves toward the adapted weights: it needs --inner-steps >= 1 and "
                            "--inner-lr > 0")
        if a.learn_inner_lr:
            raise UserError("--learn-inner-lr learns step sizes from a query loss, which --outer reptile does not have; "
                            "use --outer fomaml")

    def outer(self, model, head, task, ep):
        """A loss whose gradient is exactly (theta - phi) / (lr k), so that DDP all-reduces it like any
        other; its value is the last inner step's loss. Only persistent weights move: a head rebuilt
        every episode has none."""
        learner = getattr(self, "owner", self)  # the run's whole learner: its reparam, step sizes, direction
        with torch.no_grad():  # the prototypes need no graph: no query gradient flows through them here
            fast, ep = task.start(model, head, ep, adapted_names(model, learner))
        units = learner.units(task, ep)

        def both(f):  # (logits, targets) of support and query together
            (ls, ys), (lq, yq) = task.support(model, f, ep), task.query(model, f, ep)
            return torch.cat([ls, lq]), torch.cat([ys, yq])

        losses = []
        phi = adapt(both, fast, task, ep, learner, losses)
        a = self.a
        surrogate = sum((w * ((w - phi[n]).detach() / (a.inner_lr * units.get(n, 1.0) * a.inner_steps))).sum()
                        for n, w in fast.items() if isinstance(w, nn.Parameter))  # d/dw = (theta - phi) / (lr k)
        return surrogate - surrogate.detach() + losses[-1], {"support_acc": None, "query_acc": None}

    def flops(self, f):
        return f["start_nograd"] + self.a.inner_steps * (f["support"] + f["query"])
