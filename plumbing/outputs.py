"""
What a training run prints and writes besides its checkpoints and log rows (plumbing beside
train.py): the derived numbers before training, run.json, fresh logs, the dynamics recorder,
the held-out texts; at each eval the log row, the lines printed with it and the checkpoint; the
step line, and the clock behind the time estimate.
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import meta
from data import STREAM_PROBE, STREAM_VAL, VAL_SEED, get_batch
from plumbing import checkpoint, config, dynamics, heldout
from plumbing.accounting import count_model, peak_flops
from plumbing.errors import UserError


def describe(run, a):
    """The derived numbers, printed before training."""
    total, non_emb = count_model(run.model)
    d, margs = run.data[0], run.model.args
    print(f"corpus {a.data_dir}: {d['train_tokens']:,} train and {d['val_tokens']:,} val tokens, vocab {d['vocab_size']:,}")
    if a.recipe == "cpu":
        print(f"recipe cpu (no GPU, no shape flag): {a.batch_size} x {a.block_size} tokens per step, {a.max_steps} steps, "
              f"lr {a.lr:g}, eval every {a.eval_every}; --recipe paper (or any shape flag) gives the paper's GPU shapes")
    else:
        print(f"recipe paper{'' if run.device == 'cuda' else ' (on a CPU: --recipe cpu runs in minutes)'}")
    if run.device == "cpu" and run.log.dtype == "bfloat16" and not config.cpu_has_bf16():
        print("warning: --dtype bfloat16 on a CPU without bf16 matrix units (no avx512_bf16 or amx_bf16): measured 9.2x "
              "slower than float32 on such a CPU (bench.py LM step 8,278 ms against 904); use --dtype float32", file=sys.stderr)
    print(f"model {a.size}: {total:,} parameters ({non_emb:,} non-embedding), vocab {margs.vocab_size:,}")
    print(f"device {run.device}, dtype {run.log.dtype}, compile {a.compile}, seed {a.seed}"
          + (f", {run.world} processes (DDP, {dist.get_backend()})" if run.world > 1 else ""))
    n_micro = run.world * a.grad_accum
    split = f"{run.world} processes x {a.grad_accum} micro-batches x " if n_micro > 1 else ""
    print(f"tokens per LM step: {n_micro * a.batch_size * a.block_size:,} ({split}{a.batch_size} x {a.block_size}), "
          f"{run.flops['lm']:.3g} FLOPs")
    if a.meta:
        variants = ", ".join(type(v).__name__ for v in run.learner.active)
        print(f"meta: {a.hybrid_ratio:.0%} of steps from step {a.meta_start}; {f'{n_micro} x ' if n_micro > 1 else ''}"
              f"{run.task.describe()}; inner loop {a.inner_steps} steps at lr {a.inner_lr} on {a.inner_params}; "
              f"{run.flops['meta']:.3g} FLOPs per meta step; " + (f"variants: {variants}" if variants else "plain FOMAML")
              + (f", {len(run.inner)} step sizes learned" if len(run.inner) else ""))


# ----------------------------------------------------------------------------- evaluation, log, checkpoint

def diverged(run, what, value, step):
    raise UserError(f"{what} is {value} at step {step}; {run.log.out / 'ckpt.pt'} still holds the last good eval. Lower "
                    "--lr, raise --warmup-steps or use --dtype float32, then --resume")



def measure_and_eval(run, a, measure, ev, lr):
    """Rank 0's work at an eval step: dynamics, then the eval's log row (written before the
    checkpoint of the same step: on resume, rows past the checkpoint are cut), then the checkpoint."""
    if measure and run.log.dyn:
        run.log.dyn.measure(run.model, run.state["step"])
    if ev:
        row, lines = evaluate(run, a, lr)
        with open(run.log.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        for line in lines:
            tqdm.write(line)
        save_checkpoint(run, a)
        for v in run.log.win.values():
            v.clear()


@torch.no_grad()
def val_loss(model, val, a, device, ctx):
    model.eval()
    losses = []
    for i in tqdm(range(a.eval_batches), desc="eval", leave=False, disable=None):
        x, y = get_batch(val, a.batch_size, a.block_size, VAL_SEED, STREAM_VAL, i, device)
        with ctx:
            losses.append(model(x, y).item())
    model.train()
    return float(np.mean(losses))


def evaluate(run, a, lr):
    """One log row and the lines printed with it: the window's training means, the val loss, the
    fixed val episodes before and after the inner loop, held-out text, a sample."""
    mean = lambda k: float(np.mean([float(v) for v in run.log.win[k]])) if run.log.win[k] else None  # reads the steps' tensors
    s = run.state
    row = {"step": s["step"], "tokens": s["tokens"], "flops": s["flops"], "elapsed_s": round(s["elapsed_s"], 3),
           "train_loss": mean("lm_loss"), "val_loss": val_loss(run.lm_model, run.data[2], a, run.device, run.ctx),
           "lr": lr, "ar_ms": mean("lm_ms"), "meta_ms": mean("meta_ms"),
           "meta_steps": s["meta_pos"], "lm_steps": s["lm_pos"], "meta_loss": mean("meta_loss"),
           "support_acc": mean("support_acc"), "query_acc": mean("query_acc")}
    if not math.isfinite(row["val_loss"]):  # never overwrite the last good checkpoint with a broken model
        diverged(run, "val loss", row["val_loss"], s["step"])
    lines = [f"eval step {row['step']}: val loss {row['val_loss']:.4f} (ppl {math.exp(row['val_loss']):.1f})"]
    if run.task:  # the fixed val episodes, before and after the inner loop
        row |= meta.evaluate(run.model, run.head, run.task, run.task.val_episodes(), run.learner, run.device, run.ctx)
        if row.get("episode_acc_before") is not None:  # --eval-episodes 0 scores none
            lines[0] += f", val episodes acc {row['episode_acc_before']:.3f} -> {row['episode_acc_after']:.3f}"
    extra, line = run.learner.report()
    row |= extra
    lines += [line] if line else []
    if run.log.texts:
        row["eval_text"] = {n: heldout.text_loss(run.lm_model, t, run.data[3].unk, a, run.device, run.ctx)
                            for n, t in run.log.texts.items()}
        lines[0] += "".join(f", {n} {v['bpb']:.3f} bits/byte" for n, v in row["eval_text"].items())
    if a.sample_tokens:
        row["sample"] = heldout.sample(run.model, run.data[3], a, run.device, run.data[0]["vocab_size"])
        lines.append(f"sample: {a.sample_prompt + row['sample']!r}")
    return row, lines


def save_checkpoint(run, a):
    """OUT/ckpt.pt (and ckpt_step{N}.pt every --save-every steps): one plain dict, written atomically."""
    step, tok = run.state["step"], run.data[3]
    ck = {"model": run.model.state_dict(), "meta_head": run.head.state_dict(), "inner_lrs": run.inner.state_dict(),
          "optimizer": run.opt.state_dict(), "meta_optimizer": run.meta_opt.state_dict() if run.meta_opt else None,
          "model_args": vars(run.model.args), "step": step, "state": dict(run.state),
          "rng": checkpoint.rng_state(), "data_meta": run.data[0], "config": checkpoint.saved_config(a),
          "vocab_map": None if tok.old_of_new is None else torch.from_numpy(tok.old_of_new),
          "dynamics_probe": tuple(t.cpu() for t in run.log.dyn.probe) if run.log.dyn else None}
    checkpoint.save(run.log.out / "ckpt.pt", ck)
    run.log.saved_step = step
    if a.save_every and step % a.save_every == 0:  # a trajectory for eval_ner.py and the dynamics
        checkpoint.save(run.log.out / f"ckpt_step{step}.pt", ck)


# ----------------------------------------------------------------------------- the clock and the step line

class Log:
    """What a run writes and prints besides its steps, and what that needs between evals: the
    output folder, the last checkpoint's step, the window of step numbers the next log row
    averages, the dynamics recorder and held-out texts (rank 0), and the clock: each step's wall
    time, the estimate after the first timed steps, the "... left" of every step line."""

    def __init__(self, a, device, dtype, step, saved_step):
        self.a, self.out, self.device, self.dtype, self.saved_step = a, Path(a.out_dir), device, dtype, saved_step
        self.dyn_every = 0 if a.dynamics_every == 0 else (a.dynamics_every or a.eval_every)  # the same on every rank
        self.dyn, self.texts = None, {}
        self.win = {k: [] for k in ("lm_ms", "meta_ms", "lm_loss", "meta_loss", "support_acc", "query_acc")}
        self.first, self.eval_s = step, None  # a resumed run has not timed an eval
        self.start = self.t1 = self.t0 = time.perf_counter()
        self.peak = peak_flops(device)

    def begin(self, run, a, ckpt):
        """Rank 0: the derived numbers, run.json (what compare.py needs without loading a
        checkpoint), fresh logs, the dynamics recorder on its probe batch (drawn once, then carried
        in the checkpoint), and the held-out texts."""
        describe(run, a)
        self.out.mkdir(parents=True, exist_ok=True)
        total, non_emb = count_model(run.model)
        (self.out / "run.json").write_text(json.dumps({
            "config": checkpoint.saved_config(a), "data_meta": run.data[0], "world_size": run.world,
            "model_args": vars(run.model.args), "params": total, "non_embedding_params": non_emb}, indent=2, default=str))
        for p in (self.out / "log.jsonl", self.out / "dynamics.jsonl"):
            if not a.resume and p.exists():
                p.unlink()  # a fresh run starts fresh logs
        if self.dyn_every:
            probe = (ckpt or {}).get("dynamics_probe") or get_batch(
                run.data[2], min(4, a.batch_size), a.block_size, a.seed, STREAM_PROBE, 0, "cpu")
            self.dyn = dynamics.Recorder(tuple(t.to(self.device) for t in probe), self.out / "dynamics.jsonl", run.ctx)
        self.texts = heldout.load_texts(a, run.data[3])

    def time_eval(self, fn):
        t0 = time.perf_counter()
        fn()
        self.eval_s = time.perf_counter() - t0
        self.start = time.perf_counter()
    def start_step(self):
        self.t0 = time.perf_counter()

    def end_step(self, state):
        """The step's seconds, added to state["elapsed_s"]; after the first few timed steps
        (the first pays one-time costs), the estimate."""
        dt = time.perf_counter() - self.t0
        state["elapsed_s"] += dt
        timed = state["step"] - self.first  # steps done after the first, this one included
        if timed == 0:
            self.t1 = time.perf_counter()
        elif timed == min(5, self.a.max_steps - self.first - 1):
            tqdm.write(self.estimate(timed))
        return dt

    def estimate(self, timed):
        a, first = self.a, self.first
        per_step = (time.perf_counter() - self.t1) / timed
        evals = len({s for s in range(first + 1, a.max_steps + 1) if s % a.eval_every == 0} | {a.max_steps})
        total = per_step * (a.max_steps - first) + evals * (self.eval_s or 0)
        return (f"estimated time: {clock(total)} for {a.max_steps - first} steps ({1000 * per_step:.0f} ms per step "
                f"over steps {first + 2}-{first + timed + 1}, " + (f"{evals} evals at {self.eval_s:.1f} s)"
                                                                   if self.eval_s is not None else "evals not included)"))

    def left(self, step):
        done = step - self.first
        return clock((time.perf_counter() - self.start) / max(1, done) * (self.a.max_steps - step))  # evals included


def log_step(run, a, kind, loss, stats, lr, gnorm, dt, bar):
    """Keep the step's numbers for the eval's means; every --log-every steps, the one host sync of
    the interval: check the loss for NaN (the checkpoint on disk is the last good eval's) and print."""
    run.log.win[f"{kind}_ms"].append(1000 * dt)
    run.log.win[f"{kind}_loss"].append(loss)
    for k in ("support_acc", "query_acc"):  # lm episodes have no classes
        if stats.get(k) is not None:
            run.log.win[k].append(stats[k])
    if run.state["step"] % a.log_every == 0 or run.state["step"] == a.max_steps:
        if not math.isfinite(loss := loss.item()):
            diverged(run, f"{kind} loss", loss, run.state["step"])
        tqdm.write(step_line(run, kind, loss, lr, gnorm, dt))
        bar.set_postfix(loss=f"{loss:.3f}", kind=kind)


def step_line(run, kind, loss, lr, gnorm, dt):
    msg = f"step {run.state['step']:>6} {kind:>4} loss {loss:.4f} lr {lr:.2e} |g| {gnorm:.2f} {1000 * dt:7.1f} ms/step"
    if kind == "lm":
        msg += f" {run.a.batch_size * run.a.block_size * run.world * run.a.grad_accum / dt:9,.0f} tok/s"
        if run.log.peak:
            msg += f" MFU {run.flops['lm'] / dt / run.log.peak / run.world:.1%}"
    return msg + f"  {run.log.left(run.state['step'])} left"


def clock(s):
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
