"""
What every task shares: the interface meta.py calls, and the small pieces the three tasks
use (the decoder run with fast weights, the loss, the accuracy).

A task is one unit: its episode builder and its head side by side. meta.py asks it for
  start(model, head, ep, names) -> (fast, ep)  the starting fast weights, and the episode with
                                              what it caches for the inner loop (the decoder's
                                              weights as ep["params"], features)
  support(model, fast, ep) / query(model, fast, ep) -> (logits, targets) for fast weights
  units(ep)                                    a multiplier of the inner step per tensor (default 1)
and train.py for train_episode(i, device), val_episodes(), describe(). Fast-weight names that
start with "head." belong to the episode head, the others to the decoder.

Every episode is a pure function of (seed, stream, episode number), so resuming a run and the
LM stream of a hybrid run are unaffected by how many episodes were drawn.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

import data as datalib

TENSORS = ("xs", "ys", "xq", "yq", "ps", "pq", "classes")  # what moves to the device


class Task:
    """The shared half of a task: data splits, the tokenizer, the episode streams."""

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok, tok=None):
        self.a, self.tok, self.dmeta = a, tok or datalib.Tokenizer(dmeta, data_dir), dmeta
        self.data_dir = data_dir
        self.splits = {"train": train_tok, "val": val_tok}
        self._val = None

    def episode(self, split, rng):  # the task's builder: a dict of numpy arrays
        raise NotImplementedError

    def train_episode(self, i, device):
        key = [self.a.seed, datalib.STREAM_META, i]
        return to_device(self.episode("train", np.random.default_rng(key)) | {"seed": episode_seed(key)}, device)

    def val_episodes(self):
        """The fixed val episodes (--eval-episodes of them), the same for every run."""
        if self._val is None:
            key = lambda i: [datalib.VAL_SEED, datalib.STREAM_VAL_EPISODES, i]
            self._val = [self.episode("val", np.random.default_rng(key(i))) | {"seed": episode_seed(key(i))}
                         for i in range(self.a.eval_episodes)]
        return self._val

    def make_head(self, d_model, vocab_size):
        """The meta-learned parameters outside the decoder (none by default)."""
        return torch.nn.ParameterDict()

    def head_names(self, head):
        """The fast-weight names of the episode head's tensors that the inner loop adapts."""
        return []

    def units(self, ep):
        return {}

    def describe(self):
        return f"{self.shape()} = {self.tokens_per_episode():,} tokens/episode"


# ----------------------------------------------------------------------------- shared pieces

_call = functional_call


def use_compile(backend="inductor"):
    """--compile: the decoder's episode passes go through torch.compile too. Compiling
    functional_call itself makes the weights graph inputs, so the new fast-weight tensors of
    every inner step reuse one graph per shape (no recompiles) and autograd runs through it.
    backend=None goes back to plain functional_call (the tests use the cheap "aot_eager")."""
    global _call
    _call = torch.compile(functional_call, backend=backend) if backend else functional_call


def decoder(model, params, x, hidden=False, arch=None):
    """The decoder run with the weights in params: logits, or hidden states if hidden; arch:
    the episode's TAMS choice of ops (meta.with_arch), or None."""
    return _call(model, params, (x,), {"hidden": hidden} if arch is None else {"hidden": hidden, "arch": arch})


def with_backbone(ep, fast):
    """The decoder's full weight dict (ep["params"], taken once per episode by start) with the fast
    weights that belong to it swapped in."""
    return {**ep["params"], **{n: w for n, w in fast.items() if not n.startswith("head.")}}


def fp32(device):
    # episode heads run in float32 even under bf16 autocast: their logits are small differences
    # of large dot products, which bf16 (8 bits of mantissa) gets wrong by whole units
    return torch.autocast(torch.device(device).type, enabled=False)


def ce(logits, y):
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), ignore_index=-100)  # -100: pico's ignored labels


def accuracy(logits, y):
    """The fraction of kept labels predicted, as a float64 tensor: a training step never reads it
    back (that would make the host wait for the GPU); the log line does, every --log-every steps."""
    keep = y != -100
    return ((logits.argmax(-1) == y) & keep).sum().double() / keep.sum().clamp(min=1).double()


def episode_seed(key):
    """An integer of the episode's own, for what the learner draws per episode (--inner-rank's
    directions) without touching any other random stream."""
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def host_to(t, device):
    """A host tensor on `device`. To a GPU through pinned memory, asynchronously: a copy from
    ordinary (pageable) memory first waits for the GPU's queue to drain, a host sync per batch."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def to_device(ep, device):
    out = {k: host_to(torch.from_numpy(np.asarray(v)), device) for k, v in ep.items() if k in TENSORS}
    out["tokens"] = sum(v.numel() for k, v in out.items() if k in ("xs", "xq"))
    out |= {k: v for k, v in ep.items() if isinstance(v, int)}  # host numbers (seed, lengths) stay on the host
    out.setdefault("seed", 0)
    return out
