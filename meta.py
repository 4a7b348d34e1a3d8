"""
First-order MAML (FOMAML) over self-supervised episodes, mixed into LM pretraining.

MAML in four lines. An episode has a support set S and a query set Q of the same task.
  inner loop:  phi_0 = theta;  phi_{i+1} = phi_i - alpha * grad L_S(phi_i)     (a few SGD steps)
  outer loss:  L_Q(phi_n): how well the *adapted* weights do on unseen examples of the task
  meta-grad:   d L_Q(phi_n) / d theta = (prod_i (I - alpha * H_S(phi_i))) grad L_Q(phi_n)
First-order MAML drops the Hessians H_S: phi_n = theta - alpha * sum_i g_i with every g_i a
constant, so d phi_n / d theta = I and the meta-gradient is grad L_Q evaluated at phi_n, applied
to theta. Parameters live in dicts and every update is out of place, so
torch.func.functional_call runs the model with the fast weights while autograd routes
grad L_Q back onto the originals.

Read top to bottom: inner_loop, meta_loss (one episode), evaluate (the fixed val episodes),
step_flops. The task (tasks/) says what the support and query sets and the head are; this
file never looks inside an episode.

Where a variant plugs in. Learner below is FOMAML's choice at each of these places; a variant
in learners/ overrides the ones it fills, and Learners composes those the flags select:
  change_model   a change to the decoder, made once            (default: none)
  adaptable      which of its weights the inner loop may adapt (default: all of them)
  episode        what the decoder passes of an episode see     (default: the episode as it is)
  reparam        how the fast weights are parameterised        (default: the weights themselves)
  step_size      each tensor's inner step size                 (default: --inner-lr)
  direction      each inner step's update direction            (default: the gradient, SGD)
  outer          the outer rule                                (default: FOMAML's query loss)
A reader who never opens learners/ has read the whole algorithm.
"""
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from plumbing.tensors import accuracy, ce, to_device

# ----------------------------------------------------------------------------- the algorithm


def inner_loop(support_loss, fast, steps, lr, losses=None, direction=None):
    """`steps` SGD steps on support_loss, first order: each gradient g_i is taken at detached
    weights, so it is a constant, and the result theta - lr * sum_i g_i has d/d theta = I.
    `fast` may hold parameters or tensors that carry a graph (prototypes): it is kept intact.
    lr is one float or a step size per tensor; a step size that is a tensor with a graph (a learned one)
    receives d L_Q / d lr = -<grad L_Q(phi_n), sum_i g_i> from the last line, the only place it
    enters the graph. `losses`, a list, receives each step's loss. `direction(i, phi, grads)`
    turns step i's gradients into its update directions d_i (default: the gradients, SGD);
    every d_i is a constant just the same."""
    lr = lr if isinstance(lr, dict) else dict.fromkeys(fast, lr)
    phi = {n: w.detach() for n, w in fast.items()}
    total = {n: torch.zeros_like(w) for n, w in phi.items()}
    for i in range(steps):
        phi = {n: w.requires_grad_() for n, w in phi.items()}
        loss = support_loss(phi)
        grads = torch.autograd.grad(loss, list(phi.values()))
        if losses is not None:
            losses.append(loss.detach())
        with torch.no_grad():
            d = grads if direction is None else direction(i, phi, grads)
            phi = {n: w - lr[n] * g for (n, w), g in zip(phi.items(), d)}
        total = {n: t + g for (n, t), g in zip(total.items(), d)}
    return {n: w - lr[n] * total[n] for n, w in fast.items()}


def meta_loss(model, head, task, ep, learner):
    """One episode's outer loss, whose backward leaves the meta-gradient on the starting weights,
    and the episode's accuracies. The outer rule is the learner's (FOMAML: fomaml_loss)."""
    with learner.episode(model, ep) as ep:
        return learner.outer(model, head, task, ep)


def fomaml_loss(model, head, task, ep, learner):
    """FOMAML: adapt on the support set, then the query loss of the adapted weights; its backward
    leaves the first-order meta-gradient on the starting weights (the inner steps are detached).
    The inner loop's torch.autograd.grad calls run here, before any backward of the caller:
    under DDP they all-reduce nothing."""
    fast, ep = task.start(model, head, ep, adapted_names(model, learner))
    support = lambda f: task.support(model, f, ep)
    fast = adapt(support, fast, task, ep, learner)
    logits, y = task.query(model, fast, ep)
    loss = ce(logits, y)
    s_acc = None
    if task.CLASSIFIES:  # support accuracy of the adapted weights (no extra backbone pass for head-only)
        with torch.no_grad():
            s_acc = accuracy(*support({n: w.detach() for n, w in fast.items()}))
    return loss, {"support_acc": s_acc, "query_acc": accuracy(logits.detach(), y)}


def adapt(support, fast, task, ep, learner, losses=None):
    """The inner loop with the learner's pieces: the fast weights' parameterisation (compose
    turns what adapts into the decoder's weights), each tensor's step size times the task's
    unit for it (e.g. ProtoMAML's logit units), and the update direction. Returns the adapted
    fast weights under their own names."""
    fast, compose = learner.reparam(fast, ep.get("seed", 0))
    units = learner.units(task, ep)
    lr = {n: units.get(n, 1.0) * learner.step_size(n) for n in fast}
    direction = learner.direction()
    return compose(inner_loop(lambda f: ce(*support(compose(f))), fast, learner.a.inner_steps, lr, losses, direction))


def adapted_names(model, learner):
    """Decoder parameter names the inner loop adapts (--inner-params): none (head), the last K
    blocks and the final norm (top-K), or every one (all), among those the learner lets adapt."""
    spec = learner.a.inner_params
    names = learner.adaptable(model, [n for n, _ in model.named_parameters()])
    if spec == "head":
        return []
    if spec == "all":
        return names
    first = model.args.n_layer - int(spec.split("-")[1])
    return [n for n in names if n == "norm.weight" or (n.startswith("layers.") and int(n.split(".")[1]) >= first)]


# ----------------------------------------------------------------------------- the hooks

class Learner:
    """FOMAML's choice at every hook. A variant (learners/NAME.py, a learners.Variant) overrides
    the hooks it fills."""

    def __init__(self, a):
        self.a = a

    def change_model(self, model):
        """Change the freshly built decoder in place (before it is trained or loaded)."""

    def adaptable(self, model, names):
        return names

    @contextmanager
    def episode(self, model, ep):
        yield ep

    def reparam(self, fast, seed):
        """(what the inner loop adapts, compose: those tensors -> the fast weights)."""
        return fast, lambda f: f

    def fast_names(self, model, names):
        """The names reparam gives the adapted decoder tensors `names`."""
        return names

    def learned(self, names):
        """Meta-learned tensors of the learner's own, keyed by adapted tensor name ('.' -> '/')."""
        return nn.ParameterDict()

    def step_size(self, name):
        return self.a.inner_lr

    def units(self, task, ep):
        return task.units(ep)

    def direction(self):
        return None

    def outer(self, model, head, task, ep):
        return fomaml_loss(model, head, task, ep, self)

    def flops(self, task_flops):
        """One meta step's FLOPs from the task's passes (Task.flops_per_episode)."""
        f, a = task_flops, self.a
        return f["start"] + (0 if a.inner_params == "head" else a.inner_steps * f["support"]) + f["query"]

    def observe(self, ep):
        """See a val episode after episode() (a variant may count what it chose)."""

    def report(self):
        """Numbers of the learner's own for an eval's log row (and the line printed with it)."""
        return {}, ""


# ----------------------------------------------------------------------------- accounting and evaluation

def step_flops(task, learner, flops):
    """FLOPs of one meta step, inner loop included (flops(L, backward, lm_head): FLOPs per token).
    Backwards are counted as full ones; the episode heads are ignored (tiny)."""
    return learner.flops(task.flops_per_episode(flops))


@torch.no_grad()
def evaluate(model, head, task, episodes, learner, device, ctx, pairs=None):
    """Query accuracy and loss on fixed episodes before and after the inner loop. pairs, a dict of
    two lists, receives each episode's query (logits, targets) "before" and "after"."""
    names = adapted_names(model, learner)
    out = {"acc_before": [], "acc_after": [], "loss_before": [], "loss_after": []}
    for ep in tqdm(episodes, desc="val episodes", leave=False, disable=None):
        with learner.episode(model, to_device(ep, device)) as ep, ctx:
            learner.observe(ep)
            fast, ep = task.start(model, head, ep, names)  # no_grad: prototypes without a graph
            with torch.enable_grad():
                adapted = adapt(lambda f: task.support(model, f, ep), fast, task, ep, learner)
            for when, f in (("before", fast), ("after", adapted)):
                logits, y = task.query(model, f, ep)
                out[f"acc_{when}"].append(accuracy(logits, y).item())
                out[f"loss_{when}"].append(ce(logits, y).item())
                if pairs is not None:
                    pairs[when].append((logits.float(), y))
    return {f"episode_{k}": float(np.mean(v)) if v else None for k, v in out.items()}
