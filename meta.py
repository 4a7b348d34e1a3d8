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

Read top to bottom: the algorithm (inner_loop, meta_loss), then the variants, each swapping
one piece: Meta-SGD's learned step sizes, low-rank deltas (Meta-Learning the Difference),
Reptile's outer rule. The task (tasks/) says what the support and query sets and the head
are; this file never looks inside an episode.
"""
import math

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from accounting import flops_per_token
from tasks.common import accuracy, ce, to_device

# ----------------------------------------------------------------------------- the algorithm


def inner_loop(support_loss, fast, steps, lr, losses=None, direction=None):
    """`steps` SGD steps on support_loss, first order: each gradient g_i is taken at detached
    weights, so it is a constant, and the result theta - lr * sum_i g_i has d/d theta = I.
    `fast` may hold parameters or tensors that carry a graph (prototypes): it is kept intact.
    lr is one float or a step size per tensor; a step size that is a tensor with a graph
    (Meta-SGD's exp(log_lr)) receives d L_Q / d lr = -<grad L_Q(phi_n), sum_i g_i> from the
    last line, the only place it enters the graph. `losses`, a list, receives each step's loss.
    `direction(i, phi, grads)` turns step i's gradients into its update directions d_i (default:
    the gradients, SGD; adamw_direction: AdamW's); every d_i is a constant just the same."""
    lrs = lr if isinstance(lr, dict) else dict.fromkeys(fast, lr)
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
            phi = {n: w - lrs[n] * g for (n, w), g in zip(phi.items(), d)}
        total = {n: t + g for (n, t), g in zip(total.items(), d)}
    return {n: w - lrs[n] * total[n] for n, w in fast.items()}


def meta_loss(model, head, task, ep, a, inner=None):
    """One FOMAML episode: adapt on the support set, then the query loss of the adapted weights,
    whose backward leaves the first-order meta-gradient on the starting weights (the inner
    steps are detached). The inner loop's torch.autograd.grad calls run here, before any
    backward of the caller: under DDP they all-reduce nothing. With --outer reptile,
    reptile_loss instead. Returns the loss and the episode's accuracies."""
    if a.outer == "reptile":
        return reptile_loss(model, head, task, ep, a)
    fast, ep = task.start(model, head, with_arch(model, ep), adapted_names(model, a.inner_params))
    support = lambda f: task.support(model, f, ep)
    fast = adapt(support, fast, step_units(task, ep, a), a, inner if inner is not None else {}, ep.get("seed", 0))
    logits, y = task.query(model, fast, ep)
    loss = ce(logits, y)
    s_acc = None
    if a.task != "lm":  # support accuracy of the adapted weights (no extra backbone pass for head-only)
        with torch.no_grad():
            s_acc = accuracy(*support({n: w.detach() for n, w in fast.items()}))
    return loss, {"support_acc": s_acc, "query_acc": accuracy(logits.detach(), y)}


def adapt(support, fast, units, a, inner, seed=0, losses=None):
    """The inner loop with its step sizes: learned (inner) or --inner-lr, times the tensor's unit
    (the task's, e.g. ProtoMAML's logit units). With --inner-rank, the backbone's matrices adapt
    through low-rank deltas (low_rank); either way the result is the full set of fast weights.
    --inner-opt adamw: AdamW's directions instead of the gradients (adamw_direction)."""
    compose = lambda f: f
    if a.inner_rank and not a.tarp:  # with --tarp the rank is the shift's, and the shift is what adapts
        fast, compose = low_rank(fast, a.inner_rank, a.inner_rank_learn_v, seed)
    lrs = {n: units.get(n, 1.0) * (inner[lr_key(n)].exp() if lr_key(n) in inner else a.inner_lr) for n in fast}
    direction = adamw_direction(a.inner_steps, a.inner_weight_decay, a.inner_schedule) if a.inner_opt == "adamw" else None
    return compose(inner_loop(lambda f: ce(*support(compose(f))), fast, a.inner_steps, lrs, losses, direction))


def step_units(task, ep, a):
    """The task's units of the inner step (ProtoMAML's logit units), for SGD. AdamW divides each
    gradient by its own scale, which is what the units do for SGD: it takes none."""
    return task.units(ep) if a.inner_opt == "sgd" else {}


def adapted_names(model, spec):
    """Backbone parameter names the inner loop adapts: none (head), the last K blocks and the
    final norm (top-K), or every parameter (all). With --tarp, only the TARP shifts (U, V, S)
    of those blocks: W0 and the norms are learned in the outer loop alone."""
    names = [n for n, _ in model.named_parameters() if not n.startswith("controller.")]  # TAMS chooses, never adapts
    if model.args.tarp:
        names = [n for n in names if ".tarp_" in n]
    if spec == "head":
        return []
    if spec == "all":
        return names
    first = model.args.n_layer - int(spec.split("-")[1])
    return [n for n in names if n == "norm.weight" or (n.startswith("layers.") and int(n.split(".")[1]) >= first)]


# ----------------------------------------------------------------------------- variant: an AdamW inner loop

def adamw_direction(steps, weight_decay=0.0, schedule="constant", betas=(0.9, 0.999), eps=1e-8):
    """--inner-opt adamw, the next-token MAML proposal's inner optimiser: step i moves each tensor
    by lr * d_i with d_i = s_i * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w), torch's AdamW
    to the last detail, its moments fresh in each episode (a new closure per episode). s_i is
    the inner schedule: 1 (constant), or a linear warmup over the first tenth of the steps and a
    cosine to 0 (cosine). First order as SGD: d_i is computed from constants, so the
    meta-gradient is still grad L_Q at the adapted weights."""
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


# ----------------------------------------------------------------------------- variant: TAMS's model search

def with_arch(model, ep):
    """--tams: the episode with its choice of op per block (model.choose on the support set),
    made once from the starting controller, which the inner loop does not adapt; the query
    loss's gradient reaches the controller through it (straight-through)."""
    return ep | {"arch": model.choose(ep["xs"])} if model.args.tams else ep


# ----------------------------------------------------------------------------- variant: Meta-SGD step sizes

def lr_key(name):
    return name.replace(".", "/")  # a ParameterDict key cannot hold dots


def fast_names(model, head, task, a):
    """Every tensor the inner loop adapts: the backbone's (adapted_names, or their U and V with
    --inner-rank) and the episode head's."""
    names = adapted_names(model, a.inner_params)
    if a.inner_rank and not a.tarp:
        matrix = lambda n: model.get_parameter(n).dim() == 2
        names = [m for n in names for m in ([n + ".U"] + [n + ".V"] * a.inner_rank_learn_v if matrix(n) else [n])]
    return names + task.head_names(head)


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


# ----------------------------------------------------------------------------- variant: low-rank deltas

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


# ----------------------------------------------------------------------------- variant: Reptile's outer rule

def reptile_loss(model, head, task, ep, a):
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
        fast, ep = task.start(model, head, with_arch(model, ep), adapted_names(model, a.inner_params))
    units = step_units(task, ep, a)

    def both(f):  # (logits, targets) of support and query together
        (ls, ys), (lq, yq) = task.support(model, f, ep), task.query(model, f, ep)
        return torch.cat([ls, lq]), torch.cat([ys, yq])

    losses = []
    phi = adapt(both, fast, units, a, {}, ep.get("seed", 0), losses)
    surrogate = sum((w * ((w - phi[n]).detach() / (a.inner_lr * units.get(n, 1.0) * a.inner_steps))).sum()
                    for n, w in fast.items() if isinstance(w, nn.Parameter))  # d/dw = (theta - phi) / (lr k)
    return surrogate - surrogate.detach() + losses[-1], {"support_acc": None, "query_acc": None}


# ----------------------------------------------------------------------------- accounting and evaluation

def step_flops(a, margs):
    """FLOPs of one meta step, inner loop included: support forward (features computed once),
    inner steps (backbone forward+backward each unless only the head adapts), query forward +
    backward (and the support backward through the prototypes with --proto-grad). Backwards
    are counted as full ones, and SMLMT windows at their full length, though the features
    are computed only up to the mask (about 3/4 of it): an upper bound. The episode heads are
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
def evaluate(model, head, task, episodes, a, device, ctx, inner=None, temperature=False):
    """Query accuracy and loss on fixed episodes before and after the inner loop; with
    temperature, also each one's loss at its best single temperature (best_temperature)."""
    names = adapted_names(model, a.inner_params)
    out = {"acc_before": [], "acc_after": [], "loss_before": [], "loss_after": []}
    pairs, chosen = {"before": [], "after": []}, []
    for ep in tqdm(episodes, desc="val episodes", leave=False, disable=None):
        ep = with_arch(model, to_device(ep, device))
        if "arch" in ep:
            chosen.append(ep["arch"].argmax(-1))  # (L,) the op of each block
        with ctx:
            fast, ep = task.start(model, head, ep, names)  # no_grad: prototypes without a graph
            with torch.enable_grad():
                adapted = adapt(lambda f: task.support(model, f, ep), fast, step_units(task, ep, a), a,
                                inner if inner is not None else {}, ep.get("seed", 0))
            for when, f in (("before", fast), ("after", adapted)):
                logits, y = task.query(model, f, ep)
                out[f"acc_{when}"].append(accuracy(logits, y).item())
                out[f"loss_{when}"].append(ce(logits, y).item())
                if temperature:
                    pairs[when].append((logits.float(), y))
    r = {f"episode_{k}": float(np.mean(v)) if v else None for k, v in out.items()}
    if chosen:  # TAMS: per block, how many val episodes chose each op (SwiGLU, skip, low-rank)
        ops = torch.stack(chosen)  # (episodes, L)
        r["tams_choices"] = [[int((ops[:, i] == o).sum()) for o in range(3)] for i in range(ops.shape[1])]
    for when, p in pairs.items():
        if p:
            r[f"episode_loss_{when}_best_t"], r[f"episode_t_{when}"] = best_temperature(p)
    return r
