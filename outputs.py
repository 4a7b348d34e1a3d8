"""
What a training run prints and writes besides its checkpoints and log rows (plumbing beside
train.py): the derived numbers before training, run.json, fresh logs, the dynamics recorder,
the held-out texts, and the time estimate.
"""
import json
import sys
import time

import torch.distributed as dist

import checkpoint
import config
import dynamics
import heldout
from accounting import count_params


def describe(run, a):
    """The derived numbers, printed before training."""
    total, non_emb = count_params(run.margs)
    d = run.dmeta
    print(f"corpus {a.data_dir}: {d['train_tokens']:,} train and {d['val_tokens']:,} val tokens, vocab {d['vocab_size']:,}")
    if a.recipe == "cpu":
        print(f"recipe cpu (no GPU, no shape flag): {a.batch_size} x {a.block_size} tokens per step, {a.max_steps} steps, "
              f"lr {a.lr:g}, eval every {a.eval_every}; --recipe paper (or any shape flag) gives the paper's GPU shapes")
    else:
        print(f"recipe paper{'' if run.device == 'cuda' else ' (on a CPU: --recipe cpu runs in minutes)'}")
    if run.device == "cpu" and run.dtype == "bfloat16" and not config.cpu_has_bf16():
        print("warning: --dtype bfloat16 on a CPU without bf16 matrix units (no avx512_bf16 or amx_bf16): measured 9.2x "
              "slower than float32 on such a CPU (bench.py LM step 8,278 ms against 904); use --dtype float32", file=sys.stderr)
    print(f"model {a.size}: {total:,} parameters ({non_emb:,} non-embedding), vocab {run.margs.vocab_size:,}")
    print(f"device {run.device}, dtype {run.dtype}, compile {a.compile}, seed {a.seed}"
          + (f", {run.world} processes (DDP, {dist.get_backend()})" if run.world > 1 else ""))
    split = f"{run.world} processes x {a.grad_accum} micro-batches x " if run.n_micro > 1 else ""
    print(f"tokens per LM step: {run.lm_tokens:,} ({split}{a.batch_size} x {a.block_size}), {run.lm_flops:.3g} FLOPs")
    if a.meta:
        print(f"meta ({a.outer}): {a.hybrid_ratio:.0%} of steps from step {a.meta_start}; "
              f"{f'{run.n_micro} x ' if run.n_micro > 1 else ''}{run.task.describe()}; inner loop {a.inner_steps} "
              f"{'SGD' if a.inner_opt == 'sgd' else f'AdamW ({a.inner_schedule})'} steps at lr {a.inner_lr} on {a.inner_params}" + (f" (rank {a.inner_rank} deltas)" if a.inner_rank else "")
              + (f", {len(run.inner)} step sizes learned" if run.inner else ""))


def start(run, a, probe):
    """Rank 0: run.json (what compare.py needs without loading a checkpoint), fresh logs, the
    dynamics recorder on its probe batch, and the held-out texts."""
    run.out.mkdir(parents=True, exist_ok=True)
    total, non_emb = count_params(run.margs)
    (run.out / "run.json").write_text(json.dumps({
        "config": checkpoint.saved_config(a), "data_meta": run.dmeta, "world_size": run.world, "model_args": vars(run.margs),
        "params": total, "non_embedding_params": non_emb}, indent=2, default=str))
    for p in (run.out / "log.jsonl", run.out / "dynamics.jsonl"):
        if not a.resume and p.exists():
            p.unlink()  # a fresh run starts fresh logs
    recorder = None
    if probe is not None:
        recorder = dynamics.Recorder(tuple(t.to(run.device) for t in probe), run.out / "dynamics.jsonl", run.ctx)
    return recorder, heldout.load_texts(a, run.tok)


def estimate(run, a):
    """The run's wall time, from its first timed steps and the time of its first eval."""
    first, done = run.clock["first"], run.state["step"] - run.clock["first"] - 1  # steps timed after the first
    per_step, eval_s = (time.perf_counter() - run.clock["t1"]) / done, run.clock["eval_s"]
    evals = len({s for s in range(first + 1, a.max_steps + 1) if s % a.eval_every == 0} | {a.max_steps})
    total = per_step * (a.max_steps - first) + evals * (eval_s or 0)
    return (f"estimated time: {clock(total)} for {a.max_steps - first} steps ({1000 * per_step:.0f} ms per step over "
            f"steps {first + 2}-{run.state['step']}, " + (f"{evals} evals at {eval_s:.1f} s)" if eval_s is not None else
                                                         "evals not included)"))


def clock(s):
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
