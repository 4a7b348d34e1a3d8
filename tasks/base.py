"""
The task contract: what meta.py and train.py may ask of a task, as an abstract class. A task
is one file, tasks/NAME.py, holding one subclass of Task; `--task NAME` selects it, and its
defaults, flags and checks live in that file. Python refuses to build a task that leaves one of
the abstract methods out, and tests/test_contract.py runs every file here through the contract.

An episode is a dict: numpy arrays (every one reaches the device), ints (stay on the host).
meta.py runs it as
    fast, ep = task.start(model, head, ep, names)    the starting fast weights; ep gains what the
                                                      inner loop reuses (the decoder's weights
                                                      as ep["params"], support features)
    task.support(model, fast, ep) -> (logits, targets)    for any fast weights
    task.query(model, fast, ep)   -> (logits, targets)
Fast-weight names that start with "head." belong to the episode head, the others to the decoder.
Every episode is a pure function of (seed, stream, episode number), so resuming a run and the
LM stream of a hybrid run are unaffected by how many episodes were drawn.
"""
from abc import ABC, abstractmethod

import numpy as np

import data as datalib
from plumbing import tensors
from plumbing.tensors import episode_seed, to_device


class Task(ABC):
    # The per-task defaults of the shared episode flags, filled in where the flag is not given:
    # --inner-lr, --inner-params, --k-shot, --n-way (None: default_n_way below).
    DEFAULTS: dict = {}
    CLASSIFIES = True  # episodes are classification (support accuracy is logged); lm's are next tokens
    PERSISTENT_HEAD = True  # the head's weights persist across episodes (smlmt's are rebuilt from prototypes)

    @classmethod
    def name(cls):
        return cls.__module__.rsplit(".", 1)[-1]  # tasks/NAME.py gives --task NAME

    @classmethod
    def add_flags(cls, group):
        """The task's own flags (an argparse group named for it)."""

    @classmethod
    def check(cls, a):
        """Refuse what this task cannot run (UserError). Called for every task, whichever is chosen,
        so that a task's own flags are checked where they are declared."""

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok, tok=None):
        self.a, self.tok, self.dmeta = a, tok or datalib.Tokenizer(dmeta, data_dir), dmeta
        self.data_dir = data_dir
        self.splits = {"train": train_tok, "val": val_tok}
        self._val = None

    # ------------------------------------------------------------------------- what every task gives

    @abstractmethod
    def episode(self, split, rng):
        """One episode of `split` drawn with the numpy Generator rng: a dict of arrays and ints."""

    @abstractmethod
    def start(self, model, head, ep, names):
        """(fast, ep): the starting fast weights (the decoder's tensors in `names`, and the head's)."""

    @abstractmethod
    def support(self, model, fast, ep):
        """(logits, targets) of the support set under the fast weights."""

    @abstractmethod
    def query(self, model, fast, ep):
        """(logits, targets) of the query set under the fast weights."""

    @abstractmethod
    def units(self, ep):
        """{fast-weight name: a multiplier of its inner SGD step}; {} for plain steps."""

    @abstractmethod
    def make_head(self, d_model, vocab_size):
        """The meta-learned parameters outside the decoder (an nn.Module; empty if none)."""

    @abstractmethod
    def head_names(self, head):
        """The fast-weight names of the head's tensors that the inner loop adapts."""

    @abstractmethod
    def tokens_per_episode(self):
        """Tokens an episode holds (support + query)."""

    @abstractmethod
    def flops_per_episode(self, fwd, full):
        """The decoder passes of one episode, in FLOPs, given fwd(L) and full(L): FLOPs per token of a
        forward and of a forward + backward pass on sequences of L tokens. A dict:
          start:        the pass start() makes, as FOMAML takes it (with its graph, if any)
          start_nograd: the same pass without a graph (Reptile)
          support:      one forward + backward over the support set (an inner step on the decoder)
          query:        one forward + backward over the query set"""

    @abstractmethod
    def describe(self):
        """One line on the episode's shape, printed before training."""

    # ------------------------------------------------------------------------- shared by every task

    def show(self, ep):
        """Print an episode decoded (tools/inspect_episodes.py): its support and query rows."""
        dec = lambda ids: self.tok.decode(ids).replace("\n", " ")
        for role, x in (("support", ep["xs"]), ("query", ep["xq"])):
            print(f"{role}:" + "".join(f"\n    {dec(s)!r}" for s in x))

    VERIFIES = ""  # what verify counts, as the inspector prints it

    def verify(self, ep, split="train"):
        """(rows that hold what their label says, rows checked), for the inspector; (0, 0): nothing to check."""
        return 0, 0

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


# ----------------------------------------------------------------------------- the decoder with fast weights

def decoder(model, params, x, hidden=False):
    """The decoder run with the weights in params (torch.func.functional_call; compiled under
    --compile): logits (n, L, V), or hidden states (n, L, d)."""
    return tensors.functional_call(model, params, (x,), {"hidden": hidden})


def with_backbone(ep, fast):
    """The decoder's full weight dict (ep["params"], taken once per episode by start) with the fast
    weights that belong to it swapped in."""
    return {**ep["params"], **{n: w for n, w in fast.items() if not n.startswith("head.")}}
