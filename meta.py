"""
First-order MAML (FOMAML) over self-supervised episodes, mixed into LM pretraining.

    python inspect_episodes.py --data-dir data/enwiki8k [episode flags]   # look at episodes first (or python meta.py ...)

MAML in four lines. An episode has a support set S and a query set Q of the same task.
  inner loop:  phi_0 = theta;  phi_{i+1} = phi_i - alpha * grad L_S(phi_i)     (a few SGD steps)
  outer loss:  L_Q(phi_n): how well the *adapted* weights do on unseen examples of the task
  meta-grad:   d L_Q(phi_n) / d theta = (prod_i (I - alpha * H_S(phi_i))) grad L_Q(phi_n)
First-order MAML drops the Hessians H_S: phi_n = theta - alpha * sum_i g_i with every g_i a
constant, so d phi_n / d theta = I and the meta-gradient is grad L_Q evaluated at phi_n, applied
to theta. Parameters live in dicts and every update is out of place, so
torch.func.functional_call runs the model with the fast weights while autograd routes
grad L_Q back onto the originals.

The episode heads (smlmt's ProtoMAML head, pico's MLP, none for lm) are in heads.py.
"""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import episodes as eplib
from heads import accuracy, ce, episode_fns
from model import flops_per_token


# Inner-loop defaults, chosen by the sweep in the README (python meta.py --score --sweep-lr ...
# on a 600-step vanilla checkpoint): the step that lowers the val episodes' query loss most
# without hurting their accuracy.
INNER_LR = {"smlmt": 2.0, "pico": 0.1, "lm": 0.1}
INNER_PARAMS = {"smlmt": "head", "pico": "head", "lm": "all"}
# smlmt: 8 shots, not 4. With 4, the prototypes are already the best head the support set
# justifies and the inner loop only sharpens the logits: a single temperature beats it (README,
# the inner loop). With 8, adapting the head beats that temperature.
K_SHOT = {"smlmt": 8, "pico": 4, "lm": 4}


def add_args(p):
    g = p.add_argument_group("meta-learning")
    g.add_argument("--meta", action="store_true", help="mix first-order MAML steps into pretraining")
    g.add_argument("--hybrid-ratio", type=float, default=0.5, help="fraction of steps that are meta steps")
    g.add_argument("--meta-start", type=int, default=None,
                   help="LM-only steps before the first meta step (default: half of --max-steps; 0 = the paper's). "
                        "The coin and the LM stream are unchanged, so LM batches still match the vanilla run's")
    g.add_argument("--task", default="smlmt", choices=["smlmt", "pico", "lm"], help="episode kind (see episodes.py)")
    g.add_argument("--n-way", type=int, default=None,
                   help="classes per episode (smlmt default: as many as make one LM batch of tokens, at most 32, "
                        "the paper's; pico: 32)")
    g.add_argument("--k-shot", type=int, default=None,
                   help="support windows per class (pico: masked support positions; lm: support sequences); default "
                        + ", ".join(f"{t} {v}" for t, v in K_SHOT.items()))
    g.add_argument("--n-query", type=int, default=4, help="query windows per class (lm: query sequences; pico: 1 position)")
    g.add_argument("--episode-len", type=int, default=64, help="tokens per smlmt / lm window (pico uses --block-size)")
    g.add_argument("--episode-feature", default="before-mask", choices=["before-mask", "mask", "last", "mean"],
                   help="smlmt: the hidden state that represents a window (before-mask: the position that predicts "
                        "the masked word)")
    g.add_argument("--proto-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="smlmt: let the query gradient flow through the prototype initialisation (fo-Proto-MAML)")
    g.add_argument("--pico-drop-outside", action="store_true",
                   help="pico: ignore labels outside the class set instead of clamping them to class 0")
    g.add_argument("--inner-steps", type=int, default=10, help="SGD steps on the support set")
    g.add_argument("--inner-lr", type=float, default=None,
                   help="inner-loop SGD step size (default per task, from the sweep in the README: "
                        + ", ".join(f"{t} {v}" for t, v in INNER_LR.items()) + "). smlmt: in logit units, see heads.episode_fns")
    g.add_argument("--learn-inner-lr", action="store_true",
                   help="first-order Meta-SGD: learn one log step size per adapted tensor, starting at --inner-lr")
    g.add_argument("--meta-weight", type=float, default=1.0,
                   help="scale of the query loss in a meta step (the optimiser's moments are shared with LM steps)")
    g.add_argument("--inner-params", default=None,
                   help="what adapts: head, top-K (last K blocks + final norm + head) or all (default: "
                        + ", ".join(f"{t} {v}" for t, v in INNER_PARAMS.items()) + ")")
    g.add_argument("--inner-rank", type=int, default=0,
                   help="adapt each adapted backbone matrix W as W + U V of rank R (U from zero, V fixed random "
                        "directions per episode; MLtD-style low-rank adaptation); 0 = adapt W itself")
    g.add_argument("--inner-rank-learn-v", action="store_true", help="with --inner-rank: adapt V as well as U")
    g.add_argument("--outer", default="fomaml", choices=["fomaml", "reptile"],
                   help="outer rule: first-order MAML (query loss of the adapted weights) or Reptile (move toward "
                        "the weights adapted on support + query)")
    g.add_argument("--skip-top-words", type=int, default=100, help="smlmt: skip the N most frequent token types")
    g.add_argument("--min-word-count", type=int, default=50, help="smlmt: skip token types rarer than this")


def check_args(a, prog="train.py"):
    """Fill the task-dependent defaults and refuse combinations that cannot run."""
    if a.inner_params is None:
        a.inner_params = INNER_PARAMS[a.task]
    if a.inner_lr is None:
        a.inner_lr = INNER_LR[a.task]
    if a.k_shot is None:
        a.k_shot = K_SHOT[a.task]
    if a.learn_inner_lr and a.inner_lr <= 0:
        raise SystemExit(f"{prog}: error: --learn-inner-lr learns log step sizes, so --inner-lr must be > 0")
    spec = a.inner_params
    if not (spec in ("head", "all") or (spec.startswith("top-") and spec[4:].isdigit())):
        raise SystemExit(f"{prog}: error: --inner-params {spec!r}: use head, top-K (e.g. top-2) or all")
    if a.task == "lm" and spec == "head":
        raise SystemExit(f"{prog}: error: --inner-params head needs --task smlmt or pico (lm has no episode head); "
                         "use top-K or all")
    if a.inner_rank < 0 or (a.inner_rank and spec == "head"):
        raise SystemExit(f"{prog}: error: --inner-rank {a.inner_rank}: a rank >= 1 adapts backbone matrices, so it "
                         "needs --inner-params top-K or all (0 = full-rank)")
    if a.inner_rank_learn_v and not a.inner_rank:
        raise SystemExit(f"{prog}: error: --inner-rank-learn-v needs --inner-rank R >= 1")
    if a.outer == "reptile" and a.task == "smlmt" and spec == "head":
        raise SystemExit(f"{prog}: error: --outer reptile moves the weights the inner loop adapts, and smlmt's head is "
                         "rebuilt from prototypes every episode: use --inner-params top-K or all")
    if a.outer == "reptile" and (a.inner_steps < 1 or a.inner_lr <= 0):
        raise SystemExit(f"{prog}: error: --outer reptile moves toward the adapted weights: it needs --inner-steps >= 1 "
                         "and --inner-lr > 0")
    if a.outer == "reptile" and a.learn_inner_lr:
        raise SystemExit(f"{prog}: error: --learn-inner-lr learns step sizes from a query loss, which --outer reptile "
                         "does not have; use --outer fomaml")


# ----------------------------------------------------------------------------- the algorithm

def inner_loop(support_loss, fast, steps, lr, losses=None):
    """`steps` SGD steps on support_loss, first order: each gradient g_i is taken at detached
    weights, so it is a constant, and the result theta - lr * sum_i g_i has d/d theta = I.
    `fast` may hold parameters or tensors that carry a graph (prototypes): it is kept intact.
    lr is one float or a step size per tensor; a step size that is a tensor with a graph
    (Meta-SGD's exp(log_lr)) receives d L_Q / d lr = -<grad L_Q(phi_n), sum_i g_i> from the
    last line, the only place it enters the graph. `losses`, a list, receives each step's loss."""
    lrs = lr if isinstance(lr, dict) else dict.fromkeys(fast, lr)
    phi = {n: w.detach() for n, w in fast.items()}
    total = {n: torch.zeros_like(w) for n, w in phi.items()}
    for _ in range(steps):
        phi = {n: w.requires_grad_() for n, w in phi.items()}
        loss = support_loss(phi)
        grads = torch.autograd.grad(loss, list(phi.values()))
        if losses is not None:
            losses.append(loss.detach())
        with torch.no_grad():
            phi = {n: w - lrs[n] * g for (n, w), g in zip(phi.items(), grads)}
        total = {n: t + g for (n, t), g in zip(total.items(), grads)}
    return {n: w - lrs[n] * total[n] for n, w in fast.items()}


def lr_key(name):
    return name.replace(".", "/")  # a ParameterDict key cannot hold dots


def make_inner_lrs(a, names):
    """--learn-inner-lr, first-order Meta-SGD (Li et al. 2017): one learnable log step size per
    adapted tensor, starting at --inner-lr; the outer optimiser trains it (no weight decay) and
    the checkpoint keeps it. Empty without the flag: every tensor then steps at --inner-lr."""
    if not (a.meta and a.learn_inner_lr):
        return nn.ParameterDict()
    return nn.ParameterDict({lr_key(n): nn.Parameter(torch.tensor(math.log(a.inner_lr))) for n in names})


def inner_lrs_now(inner):
    """{tensor name: step size} of the learned step sizes, for log.jsonl."""
    return {k.replace("/", "."): round(v.exp().item(), 6) for k, v in inner.items()}


def adapt(support, fast, units, a, inner, seed=0, losses=None):
    """The inner loop with its step sizes: learned (inner) or --inner-lr, times the tensor's unit.
    With --inner-rank, the backbone's matrices adapt through low-rank deltas (low_rank); either
    way the result is the full set of fast weights."""
    compose = lambda f: f
    if a.inner_rank:
        fast, compose = low_rank(fast, a.inner_rank, a.inner_rank_learn_v, seed)
    lrs = {n: units.get(n, 1.0) * (inner[lr_key(n)].exp() if lr_key(n) in inner else a.inner_lr) for n in fast}
    return compose(inner_loop(lambda f: ce(*support(compose(f))), fast, a.inner_steps, lrs, losses))


def low_rank(fast, rank, learn_v, seed):
    """Meta-learning the difference (Hou et al. 2022): each adapted backbone matrix W (d_out x d_in)
    adapts as W + U V. U (d_out x R) starts at zero, so the adapted model starts as the model;
    V (R x d_in) has orthonormal rows drawn for this episode (seed), so a step on U is the full
    step on W projected onto R input directions: dL/dU = G V^T, dW = -lr G V^T V, and --inner-lr
    means what it means for full-rank adaptation. Returns the tensors the inner loop adapts
    (U, and V with learn_v, in place of W; vectors and the head as before) and compose(f), the
    full fast weights W + U V that functional_call receives; the meta-gradient reaches W through
    compose. R is capped at min(d_out, d_in)."""
    gen = torch.Generator().manual_seed(seed)
    start, base, V = {}, {}, {}
    for n, w in fast.items():
        if n.startswith("head.") or w.dim() != 2:
            start[n] = w
            continue
        r = min(rank, *w.shape)
        q, _ = torch.linalg.qr(torch.randn(w.shape[1], r, generator=gen))  # (d_in, r), orthonormal columns
        base[n], V[n] = w, q.T.to(w.device, w.dtype)  # V: (r, d_in)
        start[n + ".U"] = torch.zeros(w.shape[0], r, device=w.device, dtype=w.dtype)  # (d_out, r)
        if learn_v:
            start[n + ".V"] = V[n]

    def compose(f):
        full = {n: w for n, w in f.items() if not n.endswith((".U", ".V"))}
        return full | {n: w + f[n + ".U"] @ f.get(n + ".V", V[n]) for n, w in base.items()}  # (d_out, d_in)

    return start, compose


def adapted_names(model, spec):
    """Backbone parameter names the inner loop adapts: none (head), the last K blocks and the
    final norm (top-K), or every parameter (all)."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "head":
        return []
    if spec == "all":
        return names
    first = model.args.n_layer - int(spec.split("-")[1])
    return [n for n in names if n == "norm.weight" or (n.startswith("layers.") and int(n.split(".")[1]) >= first)]


def fast_names(model, head, a):
    """Every tensor the inner loop adapts: the backbone's (adapted_names, or their U and V with
    --inner-rank) and the episode head's."""
    names = adapted_names(model, a.inner_params)
    if a.inner_rank:
        matrix = lambda n: model.get_parameter(n).dim() == 2
        names = [m for n in names for m in ([n + ".U"] + [n + ".V"] * a.inner_rank_learn_v if matrix(n) else [n])]
    if a.task == "smlmt":
        return names + ["head.w", "head.b"]
    return names + ["head." + n for n, _ in head.named_parameters()] if a.task == "pico" else names


def meta_loss(model, head, ep, a, inner=None):
    """One FOMAML episode: adapt on the support set, then the query loss of the adapted weights,
    whose backward leaves the first-order meta-gradient on the starting weights (the inner
    steps are detached). The inner loop's torch.autograd.grad calls run here, before any
    backward of the caller: under DDP they all-reduce nothing (README, Several processes).
    With --outer reptile, reptile_loss instead."""
    if a.outer == "reptile":
        return reptile_loss(model, head, ep, a)
    support, fast, query, units = episode_fns(model, head, ep, a, adapted_names(model, a.inner_params))
    fast = adapt(support, fast, units, a, inner if inner is not None else {}, ep.get("seed", 0))
    logits, y = query(fast)
    loss = ce(logits, y)
    s_acc = None
    if a.task != "lm":  # support accuracy of the adapted weights (no extra backbone pass for head-only)
        with torch.no_grad():
            s_acc = accuracy(*support({n: w.detach() for n, w in fast.items()}))
    return loss, {"support_acc": s_acc, "query_acc": accuracy(logits.detach(), y)}


def reptile_loss(model, head, ep, a):
    """Reptile (Nichol et al. 2018): no query set of its own. The inner loop runs on support and
    query together, phi = theta - lr * sum_i g_i, and the outer gradient of each persistent
    weight it adapted is (theta - phi) / (lr * k), k = --inner-steps. Dividing by the inner
    path length makes that the mean of the k inner gradients: the same scale as an LM
    gradient, whatever --inner-lr and --inner-steps, so the outer lr, the gradient clipping and
    the optimiser's moments shared with LM steps mean what they mean for an LM step. (Reptile's
    own epsilon is the outer lr.) Returned as a loss whose gradient is exactly that, so that
    DDP all-reduces it like any other; its value is the last inner step's loss. smlmt's head
    is rebuilt from prototypes every episode, so only adapted backbone weights and the pico
    head (persistent parameters) move."""
    with torch.no_grad():  # the prototypes need no graph: no query gradient flows through them here
        support, fast, query, units = episode_fns(model, head, ep, a, adapted_names(model, a.inner_params))

    def both(f):  # (logits, targets) of support and query together
        (ls, ys), (lq, yq) = support(f), query(f)
        return torch.cat([ls, lq]), torch.cat([ys, yq])

    losses = []
    phi = adapt(both, fast, units, a, {}, ep.get("seed", 0), losses)
    surrogate = sum((w * ((w - phi[n]).detach() / (a.inner_lr * units.get(n, 1.0) * a.inner_steps))).sum()
                    for n, w in fast.items() if isinstance(w, nn.Parameter))  # d/dw = (theta - phi) / (lr k)
    return surrogate - surrogate.detach() + losses[-1], {"support_acc": None, "query_acc": None}


def meta_step(model, head, ep, a, inner=None):
    """meta_loss and its backward (times --meta-weight): the meta-gradient lands in the .grad of
    the model's and the head's parameters (and of the learned log step sizes in inner, with
    --learn-inner-lr). Returns the query loss and the episode's accuracies."""
    loss, stats = meta_loss(model, head, ep, a, inner)
    (a.meta_weight * loss).backward()
    return loss.detach(), stats


def step_flops(a, margs):
    """FLOPs of one meta step, inner loop included: support forward (features computed once),
    inner steps (backbone forward+backward each unless only the head adapts), query forward +
    backward (and the support backward through the prototypes with --proto-grad). Backwards
    are counted as full ones, and SMLMT windows at their full length, though heads.features
    runs them only up to the mask (about 3/4 of it): an upper bound. The episode heads are
    ignored (tiny)."""
    lm = a.task == "lm"
    if a.task == "pico":
        L, n_s, n_q = a.block_size, a.batch_size, a.batch_size
    else:
        L = a.episode_len
        n_s, n_q = (a.k_shot, a.n_query) if lm else (a.n_way * a.k_shot, a.n_way * a.n_query)
    fwd = flops_per_token(margs, L, backward=False, lm_head=lm)
    full = flops_per_token(margs, L, backward=True, lm_head=lm)
    if a.outer == "reptile":  # prototypes without a graph, then the inner loop on support + query: no outer pass
        return (0 if lm else fwd * n_s * L) + a.inner_steps * full * (n_s + n_q) * L
    support = 0 if lm else (full if a.task == "smlmt" and a.proto_grad else fwd) * n_s * L
    inner = 0 if a.inner_params == "head" else a.inner_steps * full * n_s * L
    return support + inner + full * n_q * L


def best_temperature(pairs):
    """(query loss, T) at the single temperature T that minimises the mean query loss of
    T * logits over the episodes (an oracle, fitted on the query labels). A diagnostic: an
    inner loop whose "after" loses to "before at its best T" did nothing a temperature could not."""
    grid = np.exp(np.linspace(-2, 2, 161))  # T from 0.14 to 7.4, steps of 2.5%
    losses = [np.mean([ce(t * logits, y).item() for logits, y in pairs]) for t in grid]
    return float(min(losses)), float(grid[int(np.argmin(losses))])


@torch.no_grad()
def evaluate(model, head, val_episodes, a, device, ctx, inner=None, temperature=False):
    """Query accuracy and loss on the fixed val episodes before and after the inner loop; with
    temperature, also each one's loss at its best single temperature (best_temperature)."""
    names = adapted_names(model, a.inner_params)
    out = {"acc_before": [], "acc_after": [], "loss_before": [], "loss_after": []}
    pairs = {"before": [], "after": []}
    for ep in tqdm(val_episodes, desc="val episodes", leave=False, disable=None):
        ep = eplib.to_device(ep, device)
        with ctx:
            support, fast, query, units = episode_fns(model, head, ep, a, names)  # no_grad: prototypes without a graph
            with torch.enable_grad():
                adapted = adapt(support, fast, units, a, inner if inner is not None else {}, ep.get("seed", 0))
            for when, f in (("before", fast), ("after", adapted)):
                logits, y = query(f)
                out[f"acc_{when}"].append(accuracy(logits, y))
                out[f"loss_{when}"].append(ce(logits, y).item())
                if temperature:
                    pairs[when].append((logits.float(), y))
    r = {f"episode_{k}": float(np.mean(v)) if v else None for k, v in out.items()}
    for when, p in pairs.items():
        if p:
            r[f"episode_loss_{when}_best_t"], r[f"episode_t_{when}"] = best_temperature(p)
    return r


if __name__ == "__main__":  # python meta.py --data-dir DIR: the episode inspector (inspect_episodes.py)
    import inspect_episodes
    inspect_episodes.main()
