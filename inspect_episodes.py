"""
Look at the episodes before training on them, and score a checkpoint on the fixed val episodes.

    python inspect_episodes.py --data-dir data/enwiki8k --batch-size 16 --block-size 128   # two decoded episodes
    python inspect_episodes.py --data-dir data/enwiki8k --batch-size 16 --block-size 128 \
        --score --ckpt out/v600/ckpt.pt --sweep-params head,top-1 --sweep-lr 0.3,1,3       # inner-loop sweep

The episode flags are train.py's (meta.add_args), so an episode printed here is the episode a
run with the same flags and --seed trains on.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import checkpoint
import data as datalib
import episodes as eplib
from heads import make_head
from meta import add_args, check_args, evaluate, fast_names, make_inner_lrs
from model import ModelArgs, Transformer, preset


def main(argv=None):
    """The episode inspector: two decoded training episodes, then a check over many."""
    p = argparse.ArgumentParser(description="Print two decoded training episodes and check that every window "
                                "holds its masked word.", allow_abbrev=False)
    p.add_argument("--data-dir", required=True, help="prepared by data.py")
    p.add_argument("--seed", type=int, default=1337, help="the training run's seed (its episode stream)")
    p.add_argument("--batch-size", type=int, default=32, help="as in train.py (sets the smlmt default --n-way)")
    p.add_argument("--block-size", type=int, default=512, help="as in train.py (pico rows)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to check")
    p.add_argument("--score", action="store_true", help="instead, score the fixed val episodes (query acc and loss "
                   "before -> after the inner loop) with --ckpt's decoder, or a fresh 11m one at --seed")
    p.add_argument("--ckpt", default=None, help="a train.py checkpoint for --score")
    p.add_argument("--eval-episodes", type=int, default=16, help="fixed val episodes for --score (as in train.py)")
    p.add_argument("--sweep-lr", default=None, help="--score: comma-separated inner step sizes to try (a table)")
    p.add_argument("--sweep-params", default=None, help="--score: comma-separated --inner-params values to try")
    add_args(p)
    a = p.parse_args(argv)
    a.eval_episodes = a.eval_episodes if a.score else 0
    check_args(a, "inspect_episodes.py")
    try:
        dmeta = datalib.load_meta(a.data_dir)
        train_tok, val_tok = datalib.load_bins(a.data_dir, dmeta)
    except datalib.DataError as e:
        raise SystemExit(f"inspect_episodes.py: error: --data-dir: {e}")
    eps = eplib.Episodes(a, Path(a.data_dir), dmeta, train_tok, val_tok)
    print(eps.describe())
    if a.score:
        return score(a, eps, dmeta)
    good = n = 0
    for i in range(a.episodes):
        ep = eps.episode("train", np.random.default_rng([a.seed, eplib.STREAM_META, i]))
        if i < 2:
            print(f"\n== training episode {i}")
            eplib.show(eps, ep)
        g, m = eplib.check(eps, ep)
        good, n = good + g, n + m
    if a.task == "pico":
        print(f"\nlabels that name their own token (the others are {'ignored' if a.pico_drop_outside else 'class 0'}): "
              f"{good}/{n} over {a.episodes} episodes")
    elif a.task == "smlmt":
        print(f"\nmasked word present in {good}/{n} windows")


def score(a, eps, dmeta):
    torch.manual_seed(a.seed)
    if a.ckpt:
        try:
            ckpt = checkpoint.load(a.ckpt, fallback=False)
        except checkpoint.CheckpointError as e:
            raise SystemExit(f"inspect_episodes.py: error: --ckpt {e}")
        model = Transformer(ModelArgs(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    else:
        model = Transformer(preset("11m", dmeta["vocab_size"], a.block_size))
    head = make_head(a, model.args.d_model, model.args.vocab_size)
    if a.ckpt and ckpt.get("config", {}).get("task") == a.task and "meta_head" in ckpt:
        head.load_state_dict(ckpt["meta_head"])  # the trained temperature / pico MLP
    inner = make_inner_lrs(a, fast_names(model, head, a))
    if inner and a.ckpt and "inner_lrs" in ckpt and ckpt["inner_lrs"].keys() == inner.state_dict().keys():
        inner.load_state_dict(ckpt["inner_lrs"])  # the learned step sizes
    print(f"{a.ckpt or 'fresh init'} on {len(eps.val)} val episodes, {a.task}, {a.inner_steps} inner steps:\n")
    # The last two columns: each loss at its best single temperature (an oracle fitted on the query
    # labels). When "after" gains nothing there, the inner loop only rescaled the logits.
    print("| inner params | inner lr | query acc before -> after | query loss before -> after | loss after / before "
          "| at best temperature: before -> after (T) |")
    print("|---|---|---|---|---|---|")
    for spec in (a.sweep_params or a.inner_params).split(","):
        for lr in (a.sweep_lr.split(",") if a.sweep_lr else [a.inner_lr]):
            b = argparse.Namespace(**{**vars(a), "inner_params": spec, "inner_lr": float(lr)})
            check_args(b, "inspect_episodes.py")
            r = evaluate(model, head, eps.val, b, "cpu", torch.autocast("cpu", enabled=False), inner, temperature=True)
            lb, la = r["episode_loss_before"], r["episode_loss_after"]
            print(f"| {spec} | {'learned' if inner else lr} | {r['episode_acc_before']:.3f} -> {r['episode_acc_after']:.3f} "
                  f"| {lb:.3f} -> {la:.3f} | {la / lb:.3f} | {r['episode_loss_before_best_t']:.3f} "
                  f"({r['episode_t_before']:.2f}) -> {r['episode_loss_after_best_t']:.3f} ({r['episode_t_after']:.2f}) |",
                  flush=True)


if __name__ == "__main__":
    main()
