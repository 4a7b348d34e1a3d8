"""
The next-token loss without the logits: F.cross_entropy(x @ w.T, y) computed in chunks of rows,
so that the (N, V) logits never exist at once. At the paper's batch of 256 x 512 and cl100k's
100,352 ids they would be 13G floats. model.py calls linear_cross_entropy and nothing else.
"""
from contextlib import nullcontext

import torch


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the logits x @ w.T against y (rows with y = -1 ignored), without
    the (N, V) logits ever existing at once. Rows go through in chunks whose logits fit in a
    CPU's cache, and each chunk's gradient d loss / d logits = softmax - one_hot is formed in
    place on the spot and multiplied into the gradients of x and w; backward only scales what
    forward stored. One allocation per chunk and about 5 passes over it, where log-softmax and
    its backward make about 10 passes over the whole (N, V). Under autocast the three matmuls
    run in the autocast dtype, the softmax in float32; the weight is cast once per call and each
    chunk's probabilities once for both gradient matmuls (autocast would cast them per matmul,
    and it caches no cast of a view such as w.t()). No step reads a value back to the host: the
    chunk count comes from shapes, so a GPU never waits on it."""

    @staticmethod
    def forward(ctx, x, w, y, rows, grads):
        kind = x.device.type
        amp = kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind)
        dtype = torch.get_autocast_dtype(kind) if amp else x.dtype
        gx, gw = (torch.empty_like(x), torch.zeros_like(w)) if grads else (None, None)
        keep = (y != -1).float()  # (N,)
        n = keep.sum().clamp(min=1)
        y = y.clamp(min=0)
        loss = torch.zeros((), device=x.device)
        LAST_CALL.update(rows=len(x), chunk_rows=min(rows, len(x)), chunk_logits=min(rows, len(x)) * len(w))
        with torch.autocast(kind, enabled=False) if amp else nullcontext():  # the casts are made here, each once
            xd, wd = x.to(dtype), w.to(dtype)  # no copies in float32
            for i in range(0, len(x), rows):
                xc, yc, kc = xd[i:i + rows], y[i:i + rows, None], keep[i:i + rows, None]  # (r, d), (r, 1), (r, 1)
                p = (xc @ wd.t()).float()  # (r, V) logits
                m = p.amax(-1, keepdim=True)  # (r, 1)
                target = p.gather(1, yc)  # (r, 1)
                total = p.sub_(m).exp_().sum(-1, keepdim=True)  # (r, 1); p now holds exp(logits - max)
                loss += ((total.log() + m - target) * kc).sum()  # -log softmax at the target
                if grads:
                    p.div_(total).scatter_add_(1, yc, -torch.ones_like(target)).mul_(kc)  # softmax - one_hot
                    g = p.to(dtype)  # (r, V), in the matmuls' dtype
                    gx[i:i + rows] = g @ wd  # (r, d)
                    gw += g.t() @ xc  # (V, d)
        if grads:
            ctx.save_for_backward(gx / n, gw / n)
        return loss / n

    @staticmethod
    def backward(ctx, g):
        gx, gw = ctx.saved_tensors
        return gx * g, gw * g, None, None, None


LAST_CALL = {}  # the shapes of the last call: rows, rows per chunk, logits per chunk (what the tests check)
CHUNK_FLOATS = {"cpu": 2**21, "cuda": 2**26}  # logits per chunk: 8 MB fits a CPU's cache; 256 MB keeps a GPU busy


def linear_cross_entropy(x, w, y, chunk_floats=None, min_rows=128):
    """F.cross_entropy(x @ w.T, y, ignore_index=-1), its gradients taken during the forward
    pass when autograd will want them (training always does: one pass and three matmuls per
    chunk, where recomputing the logits in backward would take a fourth). Chunks of
    CHUNK_FLOATS[device] logits, but never fewer than 128 rows: thinner products run the
    matmuls badly (on a CPU at cl100k's vocabulary, 2,048 rows took 2.8 s in chunks of 20,
    1.3 s in chunks of 128, and 2.2 s through F.cross_entropy). On a GPU a chunk is 668 rows at
    cl100k, 67M logits (bench.py --cross-entropy times the others); the full logits of a
    256 x 512 batch would take 53 GB in float32."""
    chunk_floats = chunk_floats or CHUNK_FLOATS.get(x.device.type, CHUNK_FLOATS["cuda"])
    grads = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    return LinearCrossEntropy.apply(x, w, y, max(min_rows, chunk_floats // w.shape[0]), grads)


def keep_out_of_compiled_graphs():
    """--compile: the loss runs eagerly, a break at the end of the decoder's graph; traced, its loop
    of ~200 chunks would unroll into it. Done here, when a run compiles, and not as a decorator:
    that would import torch._dynamo (a second per process) into every command."""
    global linear_cross_entropy, _kept_out
    if not _kept_out:
        linear_cross_entropy, _kept_out = torch.compiler.disable(linear_cross_entropy), True


_kept_out = False
