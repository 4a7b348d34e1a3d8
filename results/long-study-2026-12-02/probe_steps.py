"""
Why do meta steps cost the language model more than the LM steps they displace? Two measurements
on the long study's checkpoints (run from the repository root):

    python results/long-study-2026-12-02/probe_steps.py runs/s29 --step 1800 --trials 6

1. AdamW's second moments. LM and meta steps share one optimiser, so a meta gradient enters the
   running mean of g^2 that scales every later LM update. Per weight tensor, the ratio of
   sqrt(exp_avg_sq) in smlmt-s1 to that in vanilla-s1 at the same step: above 1, the meta steps
   have shrunk the LM steps' effective learning rate there.
2. One step's effect on the val loss. From smlmt-s1's checkpoint at --step, one step of each kind
   (an LM step, a meta step, or a step with zero gradient, which moves the weights only by the
   momentum and weight decay already in the optimiser), then the same 10 LM steps in each case.
   The val loss after, minus that after the zero step: what the gradient of that one step did,
   momentum and second moments included.
"""
import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import config  # noqa: E402
import train  # noqa: E402
from meta_moments import slots  # noqa: E402  (this folder's, beside this file)


def moments(path):
    """Per weight tensor, sqrt(exp_avg_sq) of a checkpoint's optimiser, named as train.setup() orders
    its parameters (meta_moments.slots)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    names = slots(ck)
    return {names[k]: v["exp_avg_sq"].float().sqrt() for k, v in ck["optimizer"]["state"].items()}


def second_moments(S, step):
    van, sml = moments(S / f"vanilla-s1/ckpt_step{step}.pt"), moments(S / f"smlmt-s1/ckpt_step{step}.pt")
    rows = []
    for n in [n for n in van if n in sml]:
        r = (sml[n] + 1e-12) / (van[n] + 1e-12)
        rows.append((n, float(r.median()), float(sml[n].mean() / van[n].mean())))
    return rows


def probe(S, step, trials, follow):
    tmp = Path(tempfile.mkdtemp())
    (tmp / "ckpt.pt").symlink_to((S / f"smlmt-s1/ckpt_step{step}.pt").resolve())
    # float32, not the run's bf16: a one-step effect of ~1e-3 nats must not drown in bf16 rounding
    a = config.get_args(["--out-dir", str(tmp), "--resume", "--dynamics-every", "0", "--dtype", "float32"])
    device, dtype, ctx = config.hardware(a.device, a.dtype)
    run = train.setup(a, 0, 1, device, dtype, ctx)
    a = run.a
    snap = copy.deepcopy([run.model.state_dict(), run.head.state_dict(), run.inner.state_dict(), run.opt.state_dict()])

    def restore():
        run.model.load_state_dict(snap[0]), run.head.load_state_dict(snap[1]), run.inner.load_state_dict(snap[2])
        run.opt.load_state_dict(copy.deepcopy(snap[3]))

    def step(kind, pos):
        for g in run.opt.param_groups:
            g["lr"] = train.lr_at(step_no, a)
        if kind == "zero":
            for p in run.params:
                p.grad = torch.zeros_like(p)
            run.opt.step()
            run.opt.zero_grad(set_to_none=True)
            return 0.0
        return float(train.train_step(run, a, kind, pos)[3])  # the gradient's norm before clipping

    val = lambda: train.val_loss(run.lm_model, run.val_tok, a, device, ctx)
    step_no, lm0, meta0 = run.state["step"], run.state["lm_pos"], run.state["meta_pos"]
    out = {"step": step_no, "val": val(), "trials": []}
    for t in range(trials):
        row = {}
        for kind in ("zero", "lm", "meta"):
            restore()
            g = step(kind, {"lm": lm0 + follow * trials + t, "meta": meta0 + t}.get(kind, 0))
            first = val()
            for j in range(follow):
                step("lm", lm0 + t * follow + j)
            row[kind] = {"grad_norm": g, "val_after_1": first, f"val_after_{1 + follow}": val()}
        out["trials"].append(row)
        print(json.dumps(row), flush=True)
    return out


def main():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", help="the study's run folder (runs/s29)")
    p.add_argument("--step", type=int, default=1800, help="checkpoint step of smlmt-s1 and vanilla-s1")
    p.add_argument("--moment-steps", default="1200,1800,2400", help="checkpoints whose second moments are compared")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--follow", type=int, default=10, help="LM steps after the probed step")
    p.add_argument("--out", default=None, help="write the JSON here")
    a = p.parse_args()
    S = Path(a.runs)
    res = {"second_moments": {}}
    for s in [int(x) for x in a.moment_steps.split(",")]:
        rows = second_moments(S, s)
        print(f"sqrt(exp_avg_sq), smlmt-s1 / vanilla-s1 at step {s}: per tensor, median over entries, ratio of means")
        for n, med, mean in rows:
            print(f"  {n:40s} {med:6.2f} {mean:6.2f}")
        res["second_moments"][s] = [{"name": n, "median_ratio": m, "mean_ratio": r} for n, m, r in rows]
    res["probe"] = probe(S, a.step, a.trials, a.follow)
    k = f"val_after_{1 + a.follow}"
    for kind in ("lm", "meta"):
        d1 = [t[kind]["val_after_1"] - t["zero"]["val_after_1"] for t in res["probe"]["trials"]]
        dk = [t[kind][k] - t["zero"][k] for t in res["probe"]["trials"]]
        gn = [t[kind]["grad_norm"] for t in res["probe"]["trials"]]
        print(f"{kind:>4} step vs zero step: val change after it {sum(d1) / len(d1):+.5f}, after {a.follow} more LM "
              f"steps {sum(dk) / len(dk):+.5f}; |g| {sum(gn) / len(gn):.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
