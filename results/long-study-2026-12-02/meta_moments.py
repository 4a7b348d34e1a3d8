"""
How much larger are a meta step's gradients than an LM step's, tensor by tensor, as AdamW sees
them? A run with --meta-moments separate keeps one AdamW per kind of step, so its checkpoint
holds each kind's own running mean of g^2 (after clipping). Run from the repository root:

    python results/long-study-2026-12-02/meta_moments.py runs/s29/smlmt-sep-s1/ckpt_step1800.pt

Per tensor: r = the median over entries of sqrt(v_meta / v_lm), each bias-corrected for its own
step count. With shared moments, and half the steps meta, AdamW divides an LM step by about
sqrt((v_lm + v_meta) / 2) instead of sqrt(v_lm): the LM step shrinks by sqrt((1 + r^2) / 2).
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from model import ModelArgs, Transformer  # noqa: E402

def slots(ck):
    """Parameter names in train.setup()'s order: decoder, episode head, step sizes; matrices first."""
    model = Transformer(ModelArgs(**ck["model_args"]))
    named = [(n, p.dim()) for n, p in model.named_parameters()]
    named += [(f"head.{n}", t.dim()) for n, t in ck["meta_head"].items()]
    named += [(f"inner.{n}", t.dim()) for n, t in ck["inner_lrs"].items()]
    return [n for n, d in named if d >= 2] + [n for n, d in named if d < 2]  # the two param groups, in order


def corrected(opt, names):
    beta2 = opt["param_groups"][0]["betas"][1]  # the run's own, as its checkpoint saved it
    return {names[k]: s["exp_avg_sq"].float() / (1 - beta2 ** float(s["step"])) for k, s in opt["state"].items()}


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", nargs="+", help="checkpoints of --meta-moments separate runs")
    p.add_argument("--out", default=None, help="write the JSON here")
    a = p.parse_args()
    res = {}
    for path in a.ckpt:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not ck.get("meta_optimizer"):
            sys.exit(f"meta_moments.py: error: {path} has no meta optimiser; give a --meta-moments separate run's")
        names = slots(ck)
        lm, me = corrected(ck["optimizer"], names), corrected(ck["meta_optimizer"], names)
        rows = []
        for n in [n for n in lm if n in me]:
            r = float(((me[n] + 1e-30) / (lm[n] + 1e-30)).sqrt().median())
            rows.append({"name": n, "r": r, "lm_step_shrink": ((1 + r * r) / 2) ** 0.5})
        print(f"{path}: step {ck['step']} ({ck['state']['lm_pos']} LM, {ck['state']['meta_pos']} meta steps)")
        for row in rows:
            print(f"  {row['name']:32s} r {row['r']:6.2f}  shared moments would shrink an LM step x{1 / row['lm_step_shrink']:.2f}")
        res[str(path)] = {"step": ck["step"], "tensors": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
