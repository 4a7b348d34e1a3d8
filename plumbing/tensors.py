"""
Small tensor helpers shared by the tasks, meta.py and train.py: the episode loss and accuracy,
float32 heads under autocast, the compiled functional call, and where episodes and batches meet
the device (numpy arrays to tensors, through pinned memory on a GPU; the per-episode seed).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import func

from plumbing import linear_ce
from plumbing.errors import UserError

functional_call = func.functional_call  # tasks.base.decoder's; use_compile swaps in a compiled one


def use_compile(backend="inductor"):
    """--compile: the decoder's episode passes go through torch.compile too. Compiling
    functional_call itself makes the weights graph inputs, so the new fast-weight tensors of
    every inner step reuse one graph per shape (no recompiles) and autograd runs through it.
    backend=None goes back to plain functional_call (the tests use the cheap "aot_eager")."""
    global functional_call
    functional_call = torch.compile(func.functional_call, backend=backend) if backend else func.functional_call
    linear_ce.keep_out_of_compiled_graphs()


def fp32(device):
    # episode heads run in float32 even under bf16 autocast: their logits are small differences
    # of large dot products, which bf16 (8 bits of mantissa) gets wrong by whole units
    return torch.autocast(torch.device(device).type, enabled=False)


def ce(logits, y):
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), ignore_index=-100)  # -100: ignored labels


def accuracy(logits, y):
    """The fraction of kept labels predicted, as a float64 tensor: a training step never reads it
    back (that would make the host wait for the GPU); the log line does, every --log-every steps."""
    keep = y != -100
    return ((logits.argmax(-1) == y) & keep).sum().double() / keep.sum().clamp(min=1).double()


def episode_seed(key):
    """An integer of the episode's own, for what a learner draws per episode (--inner-rank's
    directions) without touching any other random stream."""
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def host_to(t, device):
    """A host tensor on `device`. To a GPU through pinned memory, asynchronously: a copy from
    ordinary (pageable) memory first waits for the GPU's queue to drain, a host sync per batch."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(ep, device):
    """The episode on `device`: every array as a tensor there, ints kept on the host; anything else
    stops the run with one line (an episode is arrays and ints, nothing that could get lost)."""
    out = {}
    for k, v in ep.items():
        if isinstance(v, np.ndarray):
            out[k] = host_to(torch.from_numpy(v), device)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[k] = int(v)  # host numbers (seed, lengths) stay on the host
        else:
            raise UserError(f"episode key {k!r} holds a {type(v).__name__}; a task's episode() returns numpy arrays "
                            "and ints only (tasks/base.py)")
    out["tokens"] = sum(out[k].numel() for k in ("xs", "xq"))
    out.setdefault("seed", 0)
    return out
