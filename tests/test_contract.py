"""The plug-in contracts: every file in tasks/ and learners/ is run through them, so a new file
is tested the day it is added, with no edit here. And the "one new file" promise itself."""
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

import data
import learners
import meta
import tasks
import train
from model import Transformer, preset
from plumbing import config
from plumbing.tensors import ce, to_device
from tasks.base import Task

ROOT = Path(__file__).resolve().parents[1]
TASKS = sorted(p.stem for p in (ROOT / "tasks").glob("*.py") if p.stem not in ("__init__", "base"))
LEARNERS = sorted(p.stem for p in (ROOT / "learners").glob("*.py") if p.stem != "__init__")


def build(data_dir, *flags):
    a = config.get_args(["--data-dir", str(data_dir), *TINY, "--meta", *map(str, flags)])
    dmeta = data.load_meta(data_dir)
    train_tok, val_tok = data.load_bins(data_dir, dmeta)
    task = tasks.make(a, Path(data_dir), dmeta, train_tok, val_tok)
    learner = learners.make(a)
    torch.manual_seed(0)
    model = Transformer(preset("11m", dmeta["vocab_size"], a.block_size))
    learner.change_model(model)
    return a, task, learner, model, task.make_head(model.args.d_model, model.args.vocab_size)


def test_the_registries_find_every_file():
    assert tasks.names() == TASKS and sorted(learners.names()) == LEARNERS
    assert {"smlmt", "pico", "lm"} <= set(TASKS) and len(LEARNERS) >= 6


@pytest.mark.parametrize("name", TASKS)
def test_every_task_keeps_the_contract(data_dir, name):
    cls = tasks.get(name)
    assert issubclass(cls, Task) and not cls.__abstractmethods__ and cls.name() == name
    assert set(cls.DEFAULTS) == {"inner_lr", "inner_params", "k_shot", "n_way"}
    a, task, learner, model, head = build(data_dir, "--task", name, "--inner-params", "top-1")
    raw = task.episode("train", np.random.default_rng(0))
    ep = task.train_episode(0, "cpu")
    arrays = [k for k, v in raw.items() if isinstance(v, np.ndarray)]
    assert arrays and all(isinstance(ep[k], torch.Tensor) for k in arrays)  # every array reaches the device
    assert ep["tokens"] == task.tokens_per_episode() == ep["xs"].numel() + ep["xq"].numel()
    assert isinstance(task.describe(), str) and task.describe()
    flops = task.flops_per_episode(lambda L, backward=True, lm_head=False: (3 if backward else 1) * L)
    assert set(flops) == {"start", "start_nograd", "support", "query"} and flops["query"] > 0 and flops["support"] > 0
    fast, ep2 = task.start(model, head, ep, meta.adapted_names(model, learner))
    for logits, y in (task.support(model, fast, ep2), task.query(model, fast, ep2)):
        assert logits.shape[:-1] == y.shape and torch.isfinite(ce(logits, y))
    loss, stats = meta.meta_loss(model, head, task, ep, learner)
    loss.backward()
    assert torch.isfinite(loss) and model.norm.weight.grad is not None  # the meta-gradient reaches the decoder
    assert set(stats) == {"support_acc", "query_acc"}
    with pytest.raises(Exception, match="numpy arrays and ints"):
        to_device(raw | {"note": "a string"}, "cpu")  # anything else stops the run with one line


@pytest.mark.parametrize("name", LEARNERS)
def test_every_learner_keeps_the_contract(data_dir, name):
    cls = learners.get(name)
    assert issubclass(cls, learners.Variant) and issubclass(cls, meta.Learner) and cls.__doc__ and cls.EXAMPLE
    filled = {h for h in learners.CHAINED + learners.SINGLE if learners.overrides(cls, h)}
    assert filled == set(cls.HOOKS) and filled  # it declares exactly the hooks it fills
    plain = config.get_args(["--task", "lm", "--inner-params", "top-1"])
    assert not cls.active(plain)  # a plain run selects no variant
    a, task, learner, model, head = build(data_dir, "--task", "lm", "--inner-params", "top-1", *cls.EXAMPLE)
    assert cls.active(a) and [type(v) for v in learner.active] == [cls]
    if "learned" in cls.HOOKS:
        learner.learned(learner.fast_names(model, meta.adapted_names(model, learner)))
    loss, _ = meta.meta_loss(model, head, task, task.train_episode(0, "cpu"), learner)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    per_token = lambda L, backward=True, lm_head=False: (3 if backward else 1) * L
    assert meta.step_flops(task, learner, per_token) > 0


FOURTH = '''
"""A fourth task, written by tests/test_contract.py: next tokens of one window, support and
query from the two halves of it."""
import numpy as np
import torch.nn as nn

from tasks.base import Task, decoder, with_backbone


class Halves(Task):
    DEFAULTS = {"inner_lr": 0.05, "inner_params": "top-1", "k_shot": 2, "n_way": None}
    CLASSIFIES = False

    def episode(self, split, rng):
        tokens, L = self.splits[split], self.a.episode_len
        s = rng.integers(0, len(tokens) - 2 * (L + 1), size=self.a.k_shot)
        rows = np.stack([np.asarray(tokens[i : i + 2 * (L + 1)], dtype=np.int64) for i in s]).reshape(-1, 2, L + 1)
        return {"xs": rows[:, 0, :-1], "ys": rows[:, 0, 1:], "xq": rows[:, 1, :-1], "yq": rows[:, 1, 1:]}

    def start(self, model, head, ep, names):
        params = dict(model.named_parameters())
        return {n: params[n] for n in names}, ep | {"params": params}

    def support(self, model, fast, ep):
        return decoder(model, with_backbone(ep, fast), ep["xs"]), ep["ys"]

    def query(self, model, fast, ep):
        return decoder(model, with_backbone(ep, fast), ep["xq"]), ep["yq"]

    def units(self, ep):
        return {}

    def make_head(self, d_model, vocab_size):
        return nn.ParameterDict()

    def head_names(self, head):
        return []

    def tokens_per_episode(self):
        return 2 * self.a.k_shot * self.a.episode_len

    def flops_per_episode(self, flops):
        n = self.a.k_shot * self.a.episode_len * flops(self.a.episode_len, backward=True, lm_head=True)
        return {"start": 0, "start_nograd": 0, "support": n, "query": n}

    def describe(self):
        return f"halves: {self.a.k_shot} windows, support then query = {self.tokens_per_episode()} tokens/episode"
'''


def test_a_fourth_task_is_one_new_file(data_dir, tmp_path):
    """The promise of tasks/__init__.py: write tasks/NAME.py, and --task NAME trains, with no other
    edit anywhere (no registry, no defaults table, no flag list)."""
    name = "halves_contract_test"
    path = ROOT / "tasks" / f"{name}.py"
    path.write_text(textwrap.dedent(FOURTH))
    try:
        train.main(["--data-dir", data_dir, "--out-dir", tmp_path, *TINY, "--task", name, "--meta", "--meta-start", 0,
                    "--hybrid-ratio", 1, "--max-steps", 5, "--eval-every", 5])
        rows = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
        assert rows[-1]["meta_steps"] == 5 and rows[-1]["lm_steps"] == 0
        assert np.isfinite(rows[-1]["meta_loss"]) and rows[-1]["episode_loss_after"] is not None
        assert json.loads((tmp_path / "run.json").read_text())["config"]["inner_params"] == "top-1"  # its own default
    finally:
        path.unlink()
        sys.modules.pop(f"tasks.{name}", None)
