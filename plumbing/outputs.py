"""
What a training run prints and writes besides its checkpoints and log rows (plumbing beside
train.py): the derived numbers before training, run.json, fresh logs, the dynamics recorder,
the held-out texts, the step line, and the clock behind the time estimate.
"""
import json
import sys
import time

import torch.distributed as dist
from tqdm import tqdm

from plumbing import checkpoint, config, dynamics, heldout
from plumbing.accounting import count_model, peak_flops


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
    if run.device == "cpu" and run.dtype == "bfloat16" and not config.cpu_has_bf16():
        print("warning: --dtype bfloat16 on a CPU without bf16 matrix units (no avx512_bf16 or amx_bf16): measured 9.2x "
              "slower than float32 on such a CPU (bench.py LM step 8,278 ms against 904); use --dtype float32", file=sys.stderr)
    print(f"model {a.size}: {total:,} parameters ({non_emb:,} non-embedding), vocab {margs.vocab_size:,}")
    print(f"device {run.device}, dtype {run.dtype}, compile {a.compile}, seed {a.seed}"
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


def start(run, a, probe):
    """Rank 0: run.json (what compare.py needs without loading a checkpoint), fresh logs, the
    dynamics recorder on its probe batch, and the held-out texts."""
    run.out.mkdir(parents=True, exist_ok=True)
    total, non_emb = count_model(run.model)
    (run.out / "run.json").write_text(json.dumps({
        "config": checkpoint.saved_config(a), "data_meta": run.data[0], "world_size": run.world,
        "model_args": vars(run.model.args), "params": total, "non_embedding_params": non_emb}, indent=2, default=str))
    for p in (run.out / "log.jsonl", run.out / "dynamics.jsonl"):
        if not a.resume and p.exists():
            p.unlink()  # a fresh run starts fresh logs
    recorder = None
    if probe is not None:
        recorder = dynamics.Recorder(tuple(t.to(run.device) for t in probe), run.out / "dynamics.jsonl", run.ctx)
    return recorder, heldout.load_texts(a, run.data[3])


class Clock:
    """Wall time: each step's, the run's (for the estimate printed after the first timed steps and
    the "... left" of every step line), and the first eval's."""

    def __init__(self, run, a):
        self.a, self.first, self.eval_s = a, run.state["step"], None  # a resumed run has not timed an eval
        self.start = self.t1 = self.t0 = time.perf_counter()
        self.peak = peak_flops(run.device)

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


def step_line(run, kind, loss, lr, gnorm, dt):
    msg = f"step {run.state['step']:>6} {kind:>4} loss {loss:.4f} lr {lr:.2e} |g| {gnorm:.2f} {1000 * dt:7.1f} ms/step"
    if kind == "lm":
        msg += f" {run.a.batch_size * run.a.block_size * run.world * run.a.grad_accum / dt:9,.0f} tok/s"
        if run.clock.peak:
            msg += f" MFU {run.flops['lm'] / dt / run.clock.peak / run.world:.1%}"
    return msg + f"  {run.clock.left(run.state['step'])} left"


def clock(s):
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
