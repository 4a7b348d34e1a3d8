"""
Speed benchmark: ms per plain LM step and per meta step (head-only FOMAML, default episode),
and their ratio, with an optimiser step included in both. Numbers, not a test.

    python bench.py --data-dir data/enwiki8k                 # CPU, 11m shape, trimmed vocabulary
    python bench.py --data-dir data/enwiki8k --device cuda --dtype bfloat16 --compile

The default episode (32-way, 4 support + 4 query windows of 64 tokens = 16,384 tokens) matches
the default LM batch (32 x 512 = 16,384 tokens), so the ratio compares equal token counts.
Target: meta / LM <= 1.3.
"""
import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import data as datalib
import episodes as eplib
import meta as metalib
import train
from model import Transformer, count_params, flops_per_token, peak_flops, preset


def timed(fn, warmup, steps, device):
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--size", default="11m")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="compile the model for the LM step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    b, rest = p.parse_known_args()
    a = train.get_args(["--data-dir", b.data_dir, "--size", b.size, *rest])  # episode and batch flags
    dmeta = datalib.load_meta(b.data_dir)
    tok = {s: np.memmap(Path(b.data_dir) / f"{s}.bin", dtype=dmeta["dtype"], mode="r") for s in ("train", "val")}
    a.eval_episodes = 0
    episodes = eplib.Episodes(a, Path(b.data_dir), dmeta, tok["train"], tok["val"])
    torch.manual_seed(0)
    margs = preset(b.size, dmeta["vocab_size"], a.block_size)
    model = Transformer(margs).to(b.device)
    head = metalib.make_head(a, margs.d_model, margs.vocab_size).to(b.device)
    lm_model = torch.compile(model) if b.compile else model
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-4)
    ctx = nullcontext() if b.dtype == "float32" else torch.autocast(b.device, dtype=torch.bfloat16)
    pos = {"lm": 0, "meta": 0}

    def lm_step():
        x, y = train.get_batch(tok["train"], a.batch_size, a.block_size, 0, train.STREAM_LM, pos["lm"], b.device)
        with ctx:
            loss = lm_model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        pos["lm"] += 1

    def meta_step():
        ep = episodes.train_episode(pos["meta"], b.device)
        with ctx:
            loss, _ = metalib.meta_step(model, head, ep, a)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        pos["meta"] += 1

    total, non_emb = count_params(margs)
    lm_tokens = a.batch_size * a.block_size
    print(f"{b.size}, vocab {margs.vocab_size:,}, {total:,} params ({non_emb:,} non-embedding), "
          f"{b.device} {b.dtype}{' compiled' if b.compile else ''}, {torch.get_num_threads()} threads")
    print(f"LM step: {a.batch_size} x {a.block_size} = {lm_tokens:,} tokens; meta step: {episodes.describe()}")
    lm_ms = timed(lm_step, b.warmup, b.steps, b.device)
    meta_ms = timed(meta_step, b.warmup, b.steps, b.device)
    lm_flops = flops_per_token(margs, a.block_size) * lm_tokens
    print(f"LM   step {lm_ms:9.1f} ms  {lm_tokens / lm_ms * 1000:10,.0f} tok/s  {lm_flops:.3g} FLOPs")
    print(f"meta step {meta_ms:9.1f} ms  {episodes.tokens_per_episode() / meta_ms * 1000:10,.0f} tok/s  "
          f"{metalib.step_flops(a, margs):.3g} FLOPs")
    print(f"meta / LM = {meta_ms / lm_ms:.2f}  (target <= 1.3)")
    peak = peak_flops(b.device)
    if peak:
        print(f"LM MFU {lm_flops / (lm_ms / 1000) / peak:.1%} of {peak:.3g} FLOP/s")
    if b.device == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
