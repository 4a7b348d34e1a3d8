"""
Speed benchmark: ms per plain LM step and per meta step (default episode and inner loop), and
their ratio, with an optimiser step included in both. Numbers, not a test. The LM step's FLOP/s
is set against this machine's own limit: a large matmul timed in the same run, in float32 and
bfloat16 ("of matmul peak"); on a GPU with a known datasheet peak, MFU too.

    python -m tools.bench --data-dir data/enwiki8k --batch-size 16 --block-size 128   # the CPU recipe's shapes
    python -m tools.bench --data-dir data/enwiki8k --device cuda --dtype bfloat16 --compile
    python -m tools.bench ... --json                               # one JSON object instead of the lines
    python -m tools.bench ... --learners                           # meta step ms and memory per inner loop / outer rule
    python -m tools.bench ... --size 11m,65m,181m --json           # each size in a fresh process, one JSON line each
    python -m tools.bench ... --cross-entropy                      # the LM loss alone: chunk sizes against full logits

The steps timed are train.py's own (train.train_step, on a run built by train.setup). The
default smlmt episode takes as many classes as make one LM batch of tokens (21-way x (8 + 4)
windows of 64 tokens = 16,128 tokens against 32 x 512 = 16,384 at the GPU defaults; the 4-way
floor at the CPU recipe's 16 x 128), so the ratio compares about equal token counts.
"""
import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import train
from plumbing import config
from plumbing.accounting import count_model, peak_flops
from plumbing.errors import UserError
from plumbing.linear_ce import linear_cross_entropy

ROOT = Path(__file__).resolve().parents[1]  # the repository: a size runs as python -m tools.bench there


def timed(fn, warmup, steps, device):
    """ms per call of fn. On a CPU, the median of the calls: on a shared machine a few of them
    stall for other tenants, and the median is the machine's own speed. On a GPU, calls only
    queue work, so a whole synchronised block is timed and averaged."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t0) / steps
    ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ms.append(1000 * (time.perf_counter() - t0))
    return float(np.median(ms))


def matmul_flops(device, dtype, steps=10, warmup=3):
    """FLOP/s of an n x n @ n x n matmul: what this device's matrix units deliver in this dtype
    (n = 2048 on a CPU; 8192 on a GPU, which a 2048 matmul does not fill).
    A CPU without bf16 matrix instructions (no AVX-512 BF16 / AMX) runs bf16 matmuls in a slow
    fallback, at about 1 GFLOP/s: a quick 512^3 probe measures that case instead."""
    small = 2 * 512**3 / (timed(lambda: torch.randn(512, 512, device=device, dtype=dtype) @
                                torch.randn(512, 512, device=device, dtype=dtype), 1, 1, device) / 1000)
    if small < 2e10:
        return small
    n = 8192 if device == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    ms = timed(lambda: a @ b, warmup, steps, device)
    return 2 * n**3 / (ms / 1000)


# --learners: the meta step of each inner loop and outer rule, on top of the episode flags given
LEARNERS = {"top-2": ["--inner-params", "top-2"],
            "top-2, rank 4": ["--inner-params", "top-2", "--inner-rank", "4"],
            "all, rank 4": ["--inner-params", "all", "--inner-rank", "4"],
            "all": ["--inner-params", "all"],
            "reptile, top-2": ["--outer", "reptile", "--inner-params", "top-2"],
            "adamw, top-2": ["--inner-opt", "adamw", "--inner-params", "top-2"],
            "tarp dynamic r4, top-2": ["--tarp", "dynamic", "--inner-rank", "4", "--inner-params", "top-2"],
            "tams, top-2": ["--tams", "--inner-params", "top-2"]}


def rss_kib(field):
    """VmRSS (now) or VmHWM (the peak) of this process, in KiB (Linux)."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


def reset_peak_rss():
    """Linux resets VmHWM to the current RSS on a '5' written to clear_refs (since 4.0); where
    that is not allowed, the peak stays the process's own since start (an upper bound)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def learners(argv, as_json):
    """Each learner in a fresh process (so that the CPU's peak RSS is its own): ms per meta step
    and the memory the meta steps add (CUDA: peak allocated; CPU: peak RSS growth)."""
    rows = {}
    for name, flags in LEARNERS.items():
        cmd = [sys.executable, "-m", "tools.bench", *argv, *flags, "--meta-only", "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"bench.py: error: --learners {name!r} failed: {r.stderr.strip().splitlines()[-1]}")
        rows[name] = json.loads(r.stdout.strip().splitlines()[-1])
    if as_json:
        return print(json.dumps(rows))
    base = rows["top-2"]
    print(f"meta step by learner ({base['size']}, {base['device']} {base['dtype']}, {base['episode']}):")
    print(f"{'learner':<16} {'ms/step':>9} {'x top-2':>8} {'memory MiB':>11} {'x top-2':>8}")
    for name, r in rows.items():
        print(f"{name:<16} {r['meta_ms']:9.1f} {r['meta_ms'] / base['meta_ms']:8.2f} {r['meta_mem_mib']:11.1f} "
              f"{r['meta_mem_mib'] / base['meta_mem_mib']:8.2f}")


def main():
    try:
        run_bench()
    except UserError as e:
        sys.exit(f"bench.py: error: {e}")


def run_bench():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--size", default="11m")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="compile the model, as train.py --compile does")
    p.add_argument("--profile", action="store_true", help="also print the top operations of 3 LM and 3 meta steps to stderr (torch.profiler)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (CPU: their median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object with every number")
    p.add_argument("--learners", action="store_true",
                   help="instead: the meta step of each inner loop and outer rule (" + "; ".join(LEARNERS) + ")")
    p.add_argument("--cross-entropy", action="store_true",
                   help="instead: the LM loss's forward and backward alone, at each chunk size and through full logits")
    p.add_argument("--meta-only", action="store_true", help=argparse.SUPPRESS)  # one learner, for --learners
    b, rest = p.parse_known_args()
    if "," in b.size:
        return sizes(b.size.split(","), b.json)
    if b.learners:
        return learners([s for s in sys.argv[1:] if s not in ("--learners", "--json")], b.json)
    with tempfile.TemporaryDirectory() as out:  # train.setup writes run.json there; nothing else is kept
        a = config.get_args(["--data-dir", b.data_dir, "--size", b.size, "--out-dir", out, "--device", b.device,
                             "--dtype", b.dtype, "--eval-episodes", "0", "--dynamics-every", "0", "--meta", "--recipe", "paper",
                             *(["--compile"] if b.compile else []), *rest], description=__doc__)  # episode and batch flags
        device, dtype, ctx = config.hardware(a.device, a.dtype)
        with contextlib.redirect_stdout(sys.stderr if b.json else sys.stdout):  # --json: stdout holds the JSON alone
            run = train.setup(a, 0, 1, device, dtype, ctx)
    return cross_entropy(b, a, run) if b.cross_entropy else measure(b, a, run)


def sizes(names, as_json):
    """Each size in a fresh process (its own peak memory and compile cache), as given otherwise."""
    argv = sys.argv[1:]
    at = argv.index("--size")
    for name in names:
        cmd = [sys.executable, "-m", "tools.bench", *argv[:at], "--size", name, *argv[at + 2:]]
        r = subprocess.run(cmd, capture_output=as_json, text=True, cwd=ROOT)
        if r.returncode != 0:
            sys.exit(f"bench.py: error: --size {name} failed" + (f": {r.stderr.strip().splitlines()[-1]}" if as_json else ""))
        if as_json:
            print(r.stdout.strip().splitlines()[-1], flush=True)


def cross_entropy(b, a, run):
    """ms and peak memory of the LM loss alone (the last layer's output -> loss -> gradients of
    it and of the embedding), at the run's batch: plumbing.linear_ce.linear_cross_entropy at several chunk
    sizes, and F.cross_entropy over the full logits, which a GPU may run faster where they fit."""
    m, n = run.model, a.batch_size * a.block_size
    x = torch.randn(n, m.args.d_model, device=b.device, requires_grad=True)
    y = torch.randint(0, m.args.vocab_size, (n,), device=b.device)
    w = m.lm_head.weight
    ways = {f"chunks of 2^{k}": (lambda k=k: linear_cross_entropy(x, w, y, chunk_floats=2**k)) for k in (20, 22, 24, 26, 28)}
    ways["full logits"] = lambda: F.cross_entropy((x @ w.t()).float(), y, ignore_index=-1)
    rows = {}
    for name, loss in ways.items():
        def step():
            with run.ctx:
                torch.autograd.grad(loss(), (x, w))
        if b.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            ms = timed(step, b.warmup, b.steps, b.device)
        except torch.OutOfMemoryError:
            ms = None
        peak = torch.cuda.max_memory_allocated() / 2**30 if b.device == "cuda" else None
        rows[name] = {"ms": ms, "peak_memory_gib": peak}
        if not b.json:
            print(f"{name:<16} " + (f"{ms:9.1f} ms" if ms else "   out of memory") + (f"  peak {peak:.2f} GiB" if peak else ""))
    if b.json:
        print(json.dumps({"size": b.size, "device": b.device, "dtype": b.dtype, "rows": n,
                          "vocab_size": m.args.vocab_size, "loss": rows}))


def measure(b, a, run):
    """Time train.py's own optimiser steps (train.train_step), LM and meta, on this run."""
    pos = {"lm": 0, "meta": 0}

    def step(kind):
        train.train_step(run, a, kind, pos[kind])
        pos[kind] += 1

    lm_step, meta_step = (lambda: step("lm")), (lambda: step("meta"))
    margs, episodes = run.model.args, run.task
    if b.meta_only:
        return print(json.dumps(meta_only(b, meta_step, episodes)))
    total, non_emb = count_model(run.model)
    lm_tokens = a.batch_size * a.block_size * a.grad_accum
    lm_flops, peak = run.flops["lm"], peak_flops(run.device)  # as train.py counts them
    mm = {d: matmul_flops(b.device, getattr(torch, d), b.steps, min(3, b.warmup)) for d in ("float32", "bfloat16")}
    lm_ms = timed(lm_step, b.warmup, b.steps, b.device)
    meta_ms = timed(meta_step, b.warmup, b.steps, b.device)
    r = {"size": b.size, "device": b.device, "dtype": b.dtype, "compile": b.compile, "threads": torch.get_num_threads(),
         "batch_size": a.batch_size, "grad_accum": a.grad_accum, "block_size": a.block_size,
         "tokens_per_step": lm_tokens, "vocab_size": margs.vocab_size,
         "lm_ms": lm_ms, "meta_ms": meta_ms, "meta_over_lm": meta_ms / lm_ms, "lm_tok_s": lm_tokens / lm_ms * 1000,
         "lm_flops_per_s": lm_flops / (lm_ms / 1000), "matmul_flops_per_s": mm[b.dtype],
         "matmul_flops_per_s_float32": mm["float32"], "matmul_flops_per_s_bfloat16": mm["bfloat16"],
         "of_matmul_peak": lm_flops / (lm_ms / 1000) / mm[b.dtype],
         "mfu": lm_flops / (lm_ms / 1000) / peak if peak else None,
         "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if b.device == "cuda" else None}
    if b.profile:
        for name, fn in (("LM", lm_step), ("meta", meta_step)):
            print(f"== {name} step profile", file=sys.stderr)
            profile(fn, b.device)
    if b.json:
        return print(json.dumps(r))
    print(f"{b.size}, vocab {margs.vocab_size:,}, {total:,} params ({non_emb:,} non-embedding), "
          f"{b.device} {b.dtype}{' compiled' if b.compile else ''}, {r['threads']} threads")
    print(f"LM step: {a.batch_size} x {a.block_size} = {lm_tokens:,} tokens; meta step: {episodes.describe()}")
    print(f"matmul: {mm['float32'] / 1e9:.1f} GFLOP/s float32, {mm['bfloat16'] / 1e9:.1f} GFLOP/s bfloat16")
    print(f"LM   step {lm_ms:9.1f} ms  {r['lm_tok_s']:10,.0f} tok/s  {lm_flops:.3g} FLOPs  "
          f"{r['lm_flops_per_s'] / 1e9:.0f} GFLOP/s = {r['of_matmul_peak']:.0%} of {b.dtype} matmul peak")
    print(f"meta step {meta_ms:9.1f} ms  {episodes.tokens_per_episode() / meta_ms * 1000:10,.0f} tok/s  "
          f"{run.flops['meta']:.3g} FLOPs (counted on whole windows)")
    print(f"meta / LM = {meta_ms / lm_ms:.2f}")
    if peak:
        print(f"LM MFU {r['mfu']:.1%} of {peak:.3g} FLOP/s (datasheet)")
    if r["peak_memory_gib"] is not None:
        print(f"peak memory {r['peak_memory_gib']:.2f} GiB")


def profile(step, device, n=3, rows=15):
    """Where a step's time goes: the operations that take most of it, over n steps. On a GPU,
    'Self CUDA time total' well below n x the step's ms means the host (Python, launches,
    syncs) is the limit, not the kernels."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows), file=sys.stderr)


def meta_only(b, meta_step, episodes):
    if b.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_kib("VmRSS") * 1024
    ms = timed(meta_step, b.warmup, b.steps, b.device)
    peak = torch.cuda.max_memory_allocated() if b.device == "cuda" else rss_kib("VmHWM") * 1024
    return {"size": b.size, "device": b.device, "dtype": b.dtype, "episode": episodes.describe(), "meta_ms": ms,
            "meta_mem_mib": (peak - base) / 2**20}


if __name__ == "__main__":
    main()
