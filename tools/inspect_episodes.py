"""
Look at the episodes before training on them, and score a checkpoint on the fixed val episodes.

    python -m tools.inspect_episodes --data-dir data/enwiki8k --batch-size 16 --block-size 128   # two episodes
    python -m tools.inspect_episodes --data-dir data/enwiki8k --batch-size 16 --block-size 128 \
        --score --ckpt out/v600/ckpt.pt --sweep-params head,top-1 --sweep-lr 0.3,1,3       # inner-loop sweep

The episode flags are train.py's (config.add_meta_args), so an episode printed here is the
episode a run with the same flags and --seed trains on.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import data as datalib
import learners
import meta
import tasks
from model import Transformer, preset
from plumbing import checkpoint, config
from plumbing.errors import UserError
from plumbing.tensors import ce


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data-dir", required=True, help="prepared by data.py")
    p.add_argument("--seed", type=int, default=1337, help="the training run's seed (its episode stream)")
    p.add_argument("--task", default="smlmt", choices=tasks.names(), help="episode kind: tasks/NAME.py")
    p.add_argument("--batch-size", type=int, default=32, help="as in train.py (sets the smlmt default --n-way)")
    p.add_argument("--block-size", type=int, default=512, help="as in train.py (pico rows)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to check")
    p.add_argument("--score", action="store_true", help="instead, score the fixed val episodes (query acc and loss "
                   "before -> after the inner loop) with --ckpt's decoder, or a fresh 11m one at --seed")
    p.add_argument("--ckpt", default=None, help="a train.py checkpoint for --score")
    p.add_argument("--eval-episodes", type=int, default=16, help="fixed val episodes for --score (as in train.py)")
    p.add_argument("--sweep-lr", default=None, help="--score: comma-separated inner step sizes to try (a table)")
    p.add_argument("--sweep-params", default=None, help="--score: comma-separated --inner-params values to try")
    config.add_meta_args(p)
    p.set_defaults(meta=True)  # --learn-inner-lr's step sizes exist here whenever asked for
    return config.check(config.resolve(config.check_counts(p.parse_args(argv))))


def main(argv=None):
    """The episode inspector: two decoded training episodes, then a check over many."""
    try:
        inspect(parse(argv))
    except UserError as e:
        sys.exit(f"inspect_episodes.py: error: {e}")


def inspect(a):
    try:
        dmeta = datalib.load_meta(a.data_dir)
        train_tok, val_tok = datalib.load_bins(a.data_dir, dmeta)
    except UserError as e:
        raise UserError(f"--data-dir: {e}") from None
    task = tasks.make(a, Path(a.data_dir), dmeta, train_tok, val_tok)
    print(task.describe())
    if a.score:
        return score(a, task, dmeta)
    good = n = 0
    for i in range(a.episodes):
        ep = task.episode("train", np.random.default_rng([a.seed, datalib.STREAM_META, i]))
        if i < 2:
            print(f"\n== training episode {i}")
            task.show(ep)
        g, m = task.verify(ep)
        good, n = good + g, n + m
    if n:  # what the task's verify checks (tasks/NAME.py)
        print(f"\n{task.VERIFIES} {good}/{n} over {a.episodes} episodes")


def score(a, task, dmeta):
    torch.manual_seed(a.seed)
    ckpt = checkpoint.load(a.ckpt, fallback=False) if a.ckpt else None
    learner = learners.make(a)
    if ckpt:
        model = checkpoint.build_model(ckpt)
    else:
        model = Transformer(preset("11m", dmeta["vocab_size"], a.block_size))
        learner.change_model(model)
    head = task.make_head(model.args.d_model, model.args.vocab_size)
    if ckpt and ckpt.get("config", {}).get("task") == a.task and "meta_head" in ckpt:
        head.load_state_dict(ckpt["meta_head"])  # the trained temperature / pico MLP
    names, inner = [], {}
    if ckpt and ckpt.get("inner_lrs"):  # the learned step sizes (with --learn-inner-lr), kept for every sweep row
        names = learner.fast_names(model, meta.adapted_names(model, learner)) + task.head_names(head)
        inner = learner.learned(names)
        if ckpt["inner_lrs"].keys() == inner.state_dict().keys():
            inner.load_state_dict(ckpt["inner_lrs"])
    episodes = task.val_episodes()
    print(f"{a.ckpt or 'fresh init'} on {len(episodes)} val episodes, {a.task}, {a.inner_steps} inner steps:\n")
    # The last two columns: each loss at its best single temperature (an oracle fitted on the query
    # labels). When "after" gains nothing there, the inner loop only rescaled the logits.
    print("| inner params | inner lr | query acc before -> after | query loss before -> after | loss after / before "
          "| at best temperature: before -> after (T) |")
    print("|---|---|---|---|---|---|")
    for spec in (a.sweep_params or a.inner_params).split(","):
        for lr in (a.sweep_lr.split(",") if a.sweep_lr else [a.inner_lr]):
            b = config.check(argparse.Namespace(**{**vars(a), "inner_params": spec, "inner_lr": float(lr)}))
            sweep = learners.make(b)
            if inner:
                sweep.learned(names).load_state_dict(inner.state_dict())
            pairs = {"before": [], "after": []}
            r = meta.evaluate(model, head, task, episodes, sweep, "cpu", torch.autocast("cpu", enabled=False), pairs)
            for when, p in pairs.items():
                r[f"episode_loss_{when}_best_t"], r[f"episode_t_{when}"] = best_temperature(p)
            lb, la = r["episode_loss_before"], r["episode_loss_after"]
            print(f"| {spec} | {'learned' if inner else lr} | {r['episode_acc_before']:.3f} -> {r['episode_acc_after']:.3f} "
                  f"| {lb:.3f} -> {la:.3f} | {la / lb:.3f} | {r['episode_loss_before_best_t']:.3f} "
                  f"({r['episode_t_before']:.2f}) -> {r['episode_loss_after_best_t']:.3f} ({r['episode_t_after']:.2f}) |",
                  flush=True)


def best_temperature(pairs):
    """(query loss, T) at the single temperature T that minimises the mean query loss of
    T * logits over the episodes (an oracle, fitted on the query labels). A diagnostic: an
    inner loop whose "after" loses to "before at its best T" did nothing a temperature could not."""
    grid = np.exp(np.linspace(-2, 2, 161))  # T from 0.14 to 7.4, steps of 2.5%
    losses = [np.mean([ce(t * logits, y).item() for logits, y in pairs]) for t in grid]
    return float(min(losses)), float(grid[int(np.argmin(losses))])



if __name__ == "__main__":
    main()
