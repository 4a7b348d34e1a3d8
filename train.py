r"""
Pretrain a Llama-style decoder with next-token prediction, optionally mixed with first-order
MAML episodes (--meta), on one GPU or CPU, or on several under torchrun (DDP). No Trainer
class: the loop is below, top to bottom.

    python train.py --size 11m                       # GPU, paper defaults, TinyStories
    python train.py --meta --size 11m                # the same, half the steps are meta steps
    python train.py --data-dir data/enwiki8k --out-dir out/vanilla --size 11m --device cpu \
        --max-steps 300 --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30 --eval-every 25
    torchrun --standalone --nproc_per_node 4 train.py --meta --size 65m --batch-size 8 --grad-accum 8

Batches are pure functions of (seed, position): the LM stream, the val batches, the meta coin
and the episodes each draw from their own counter, so a run is reproducible, resumable, and a
meta run sees exactly the LM batches of the vanilla run with the same seed, in the same order.
An optimiser step is world size x --grad-accum micro-batches (or episodes); micro-batch j of a
position is a pure function of (seed, stream, position, j), and rank r takes j = r*N .. r*N+N-1
(N = --grad-accum): 2 ranks x 1 see what 1 rank x 2 sees.
"""
import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import checkpoint
import data as datalib
import ddp
import dynamics
import episodes as eplib
import heads
import heldout
import meta as metalib
from model import PRESETS, ModelArgs, Transformer, count_params, flops_per_token, peak_flops, preset

STREAM_LM, STREAM_VAL, STREAM_COIN, STREAM_PROBE = 0, 1, 2, 4  # (episodes.py uses 3 and 5)
VAL_SEED = 1234  # val batches are the same for every run, whatever its --seed


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """-h keeps the docstring's layout and shows every flag's default."""


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", default=None, help="prepared by data.py (default: data/tinystories, made if missing)")
    g.add_argument("--out-dir", default="out", help="ckpt.pt, log.jsonl and dynamics.jsonl go here")
    g.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt (flags given again override)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--size", default="11m", choices=list(PRESETS), help="pico-decoder preset")
    g.add_argument("--max-steps", type=int, default=20000, help="optimiser steps (LM and meta together)")
    g.add_argument("--batch-size", type=int, default=32, help="sequences per LM micro-batch (per process)")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches (LM) or episodes (meta) per optimiser step and process")
    g.add_argument("--block-size", type=int, default=512, help="tokens per LM sequence")
    g.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    g.add_argument("--min-lr-frac", type=float, default=0.1, help="cosine decay ends at this fraction of --lr")
    g.add_argument("--warmup-steps", type=int, default=1000, help="linear warmup")
    g.add_argument("--decay-steps", type=int, default=None, help="length of the cosine decay (default --max-steps)")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices only)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-every", type=int, default=500, help="val loss, log.jsonl line and checkpoint")
    g.add_argument("--eval-batches", type=int, default=20, help="fixed val batches per eval")
    g.add_argument("--eval-episodes", type=int, default=16, help="fixed val episodes per eval (vanilla too)")
    g.add_argument("--eval-text", action="append", default=[], metavar="FILE",
                   help="held-out text (.txt or .jsonl; repeatable): loss and bits per byte on up to --eval-batches "
                        "x --batch-size fixed windows at every eval")
    g.add_argument("--sample-prompt", default="The history of the", help="a continuation of it is printed and logged "
                                                                         "at every eval")
    g.add_argument("--sample-tokens", type=int, default=32, help="tokens sampled per eval (temperature 0.8, top-k 50, "
                                                                 "seeded; 0 = no sample)")
    g.add_argument("--save-every", type=int, default=0,
                   help="also keep ckpt_step{N}.pt every this many steps (an eval runs there too); 0 = only ckpt.pt")
    g.add_argument("--log-every", type=int, default=10, help="one printed line per this many steps")
    g.add_argument("--dynamics-every", type=int, default=None,
                   help="effective rank / head entropy cadence (default: every eval; 0 = off)")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on GPUs that support it, else float32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (LM steps and the decoder passes of meta steps)")
    g.add_argument("--seed", type=int, default=1337, help="seeds the init and every data stream")
    metalib.add_args(p)
    args = p.parse_args(argv)
    metalib.check_args(args)
    if args.grad_accum < 1:
        p.error(f"--grad-accum {args.grad_accum}: must be at least 1")
    if args.meta_start is None:  # meta steps from scratch hold the LM on the unigram plateau (README, Results)
        args.meta_start = args.max_steps // 2
    # the dests of the flags typed on the command line (--no-proto-grad names proto_grad), which override a resumed run's
    typed = [s.split("=")[0] for s in (argv if argv is not None else sys.argv[1:]) if s.startswith("--")]
    args.given = {p._option_string_actions[s].dest for s in typed if s in p._option_string_actions}
    return args


def lr_at(step, a):
    """Linear warmup to --lr, then cosine decay to --min-lr-frac * lr over --decay-steps."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    decay = a.decay_steps or a.max_steps
    t = min(1.0, (step - a.warmup_steps) / max(1, decay - a.warmup_steps))
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def get_batch(tokens, B, T, seed, stream, pos, device, micro=0, n_micro=1):
    """Micro-batch `micro` of `n_micro` of batch number `pos` of a stream: B random windows of T+1
    tokens, inputs and shifted targets. The n_micro micro-batches together are the one batch of
    B * n_micro windows drawn at `pos`, so accumulation and ranks split a batch, not change it."""
    rng = np.random.default_rng([seed, stream, pos])
    starts = rng.integers(0, len(tokens) - T - 1, size=B * n_micro)[micro * B : (micro + 1) * B]
    xy = torch.from_numpy(np.stack([tokens[s : s + T + 1].astype(np.int64) for s in starts]))  # (B, T+1)
    xy = xy.to(device, non_blocking=True)
    return xy[:, :-1], xy[:, 1:]  # (B, T) each


def compile_model(model):
    """--compile: LM steps run the returned compiled module, and meta steps reach the same
    decoder through a compiled functional_call (heads.use_compile)."""
    heads.use_compile()
    return torch.compile(model)


@torch.no_grad()
def val_loss(model, val, a, device, ctx):
    model.eval()
    losses = []
    for i in tqdm(range(a.eval_batches), desc="eval", leave=False, disable=None):
        x, y = get_batch(val, a.batch_size, a.block_size, VAL_SEED, STREAM_VAL, i, device)
        with ctx:
            losses.append(model(x, y)[1].item())
    model.train()
    return float(np.mean(losses))


# Flags a resumed run cannot change: the model's shape, the data streams, and what the episode
# head and the learned step sizes are. All others given again take effect (README, Resume).
FIXED_ON_RESUME = ("size", "block_size", "seed", "task", "inner_params", "learn_inner_lr")


def resume_config(a, out, cut_logs=True):
    """The checkpoint to resume from, and the run's flags: today's defaults, then the saved run's,
    then those given again now. The logs are cut back to the checkpoint's step (by rank 0 only)."""
    try:
        ckpt = checkpoint.load(out / "ckpt.pt")
    except checkpoint.CheckpointError as e:
        sys.exit(f"train.py: error: --resume: {e}" + ("; train without --resume first" if "not found" in str(e) else ""))
    saved = ckpt["config"]
    for k in FIXED_ON_RESUME:
        if k in a.given and getattr(a, k) != saved.get(k):
            sys.exit(f"train.py: error: --{k.replace('_', '-')} {getattr(a, k)}: {out / 'ckpt.pt'} was trained with "
                     f"{saved.get(k)}, which a resumed run cannot change; start a fresh --out-dir")
    a = argparse.Namespace(**{**vars(a), **saved, **{k: getattr(a, k) for k in a.given}, "resume": True})
    metalib.check_args(a)
    for name in ("log.jsonl", "dynamics.jsonl") if cut_logs else ():  # rows past the checkpoint will be written again
        checkpoint.cut_log(out / name, ckpt["step"])
    print(f"resuming from step {ckpt['step']}")
    return ckpt, a


def load_state(ckpt, model, head, inner, opt, a, out):
    model.load_state_dict(ckpt["model"])
    try:
        head.load_state_dict(ckpt["meta_head"])
        inner.load_state_dict(ckpt.get("inner_lrs", {}))
        opt.load_state_dict(ckpt["optimizer"])
        opt.param_groups[0]["weight_decay"] = a.weight_decay  # a --weight-decay given again takes effect
    except (KeyError, ValueError, RuntimeError):
        saved = ckpt["config"]
        sys.exit(f"train.py: error: --resume: {out / 'ckpt.pt'} has another episode head or other learned step "
                 f"sizes (saved --task {saved.get('task')}, --inner-params {saved.get('inner_params')}, "
                 f"--learn-inner-lr {saved.get('learn_inner_lr', False)}); resume with those or start a fresh --out-dir")


def load_data(a, ckpt):
    """The token bins of --data-dir (TinyStories prepared there when none is given), checked
    against the checkpoint being resumed."""
    if a.data_dir is None:
        a.data_dir = "data/tinystories"
        if not (Path(a.data_dir) / "meta.json").exists():
            print(f"no --data-dir given and {a.data_dir} is empty: preparing the default corpus (TinyStories) there")
            try:
                datalib.prepare(datalib.TINYSTORIES, a.data_dir)
            except datalib.DataError as e:
                sys.exit(f"data.py: error: {e}")
    try:
        dmeta = datalib.load_meta(a.data_dir)
        train_tok, val_tok = datalib.load_bins(a.data_dir, dmeta)
    except datalib.DataError as e:
        sys.exit(f"train.py: error: --data-dir: {e}")
    if ckpt and datalib.fingerprint(ckpt["data_meta"]) != datalib.fingerprint(dmeta):
        sys.exit(f"train.py: error: --resume: {a.data_dir} is not the data the checkpoint was trained on")
    for name, arr in (("train", train_tok), ("val", val_tok)):
        if len(arr) <= a.block_size + 1:
            sys.exit(f"train.py: error: {a.data_dir}/{name}.bin has {len(arr)} tokens; --block-size must be smaller")
    return dmeta, train_tok, val_tok


class Objective(nn.Module):
    """The decoder, the episode head and the learned inner step sizes as one module whose forward
    is a whole step's loss: what DDP wraps, so that one backward all-reduces every gradient,
    the meta-gradient included. A meta step's inner loop (torch.autograd.grad) runs inside
    forward, before DDP listens for gradients, so it all-reduces nothing."""

    def __init__(self, model, lm_model, head, inner, a):
        super().__init__()
        self.model, self.lm_model, self.head, self.inner, self.a = model, lm_model, head, inner, a

    def forward(self, kind, batch):
        if kind == "lm":
            return self.lm_model(*batch)[1], {}
        return metalib.meta_loss(self.model, self.head, batch, self.a, self.inner)


def step_grads(net, kind, pos, a, train_tok, episodes, device, ctx, rank, world):
    """The gradients of one optimiser step, left in .grad: --grad-accum micro-batches (LM) or
    episodes (meta) on this rank, averaged with DDP's all-reduce after the last one. Of the
    step's n = world x --grad-accum micro-batches, rank r takes r*N .. r*N+N-1 (N = --grad-accum).
    Returns the mean loss over all ranks (every rank then takes the same NaN decision), the
    mean episode accuracies on this rank, and the step's tokens."""
    n, total, stats, tokens = world * a.grad_accum, 0.0, [], 0
    for i in range(a.grad_accum):
        j = rank * a.grad_accum + i  # this micro-batch's index among the step's n
        if kind == "meta":  # episode numbers stay pure functions of (meta position, j)
            batch = episodes.train_episode(pos * n + j, device)
            tokens += batch["tokens"]
        else:
            batch = get_batch(train_tok, a.batch_size, a.block_size, a.seed, STREAM_LM, pos, device, j, n)
            tokens += a.batch_size * a.block_size
        sync = world == 1 or i == a.grad_accum - 1  # all-reduce once, after the last micro-batch
        with nullcontext() if sync else net.no_sync():
            with ctx:
                loss, st = net(kind, batch)
            ((a.meta_weight if kind == "meta" else 1.0) * loss / a.grad_accum).backward()
        total = total + loss.detach() / n
        stats.append(st)
    if world > 1:
        dist.all_reduce(total)  # the sum over ranks of their share: the mean over all n
    mean = {k: float(np.mean([s[k] for s in stats])) if stats[0][k] is not None else None for k in stats[0]}
    return total.item(), mean, tokens * world


def main(argv=None):
    a = get_args(argv)
    rank, world, device = ddp.setup(a)
    try:
        train(a, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train(a, rank, world, device):
    out = Path(a.out_dir)
    ckpt = None
    if a.resume:
        ckpt, a = ddp.agree(lambda: resume_config(a, out, cut_logs=rank == 0), rank, world)
    dmeta, train_tok, val_tok = ddp.agree(lambda: load_data(a, ckpt), rank, world, "rank0_first")

    # ---- hardware
    dtype = a.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device, dtype=torch.bfloat16)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- model and optimiser
    torch.manual_seed(a.seed)
    margs = ModelArgs(**ckpt["model_args"]) if ckpt else preset(a.size, dmeta["vocab_size"], a.block_size)
    model = Transformer(margs).to(device)
    head = heads.make_head(a, margs.d_model, margs.vocab_size).to(device)  # episode head: temperature / pico MLP
    inner = metalib.make_inner_lrs(a, metalib.fast_names(model, head, a)).to(device)  # --learn-inner-lr's log step sizes
    params = [*model.parameters(), *head.parameters(), *inner.parameters()]
    decay = [p for p in params if p.dim() >= 2]  # matrices decay; norm gains, temperature and step sizes do not
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=True)
    state = {"step": 0, "lm_pos": 0, "meta_pos": 0, "tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    if ckpt:
        ddp.agree(lambda: load_state(ckpt, model, head, inner, opt, a, out), rank, world)
        state = ckpt["state"]
        checkpoint.set_rng_state(ckpt["rng"])
    lm_model = compile_model(model) if a.compile else model
    net = ddp.wrap(Objective(model, lm_model, head, inner, a), world, device)

    total, non_emb = count_params(margs)
    n_micro = world * a.grad_accum
    lm_tokens = a.batch_size * a.block_size * n_micro
    lm_flops = flops_per_token(margs, a.block_size) * lm_tokens
    peak = peak_flops(device)
    episodes = ddp.agree(lambda: eplib.Episodes(a, Path(a.data_dir), dmeta, train_tok, val_tok), rank, world, "rank0_first")
    print(f"model {a.size}: {total:,} parameters ({non_emb:,} non-embedding), vocab {margs.vocab_size:,}")
    print(f"device {device}, dtype {dtype}, compile {a.compile}, seed {a.seed}"
          + (f", {world} processes (DDP, {dist.get_backend()})" if world > 1 else ""))
    split = f"{world} processes x {a.grad_accum} micro-batches x " if n_micro > 1 else ""
    print(f"tokens per LM step: {lm_tokens:,} ({split}{a.batch_size} x {a.block_size}), {lm_flops:.3g} FLOPs")
    if a.meta:
        print(f"meta ({a.outer}): {a.hybrid_ratio:.0%} of steps from step {a.meta_start}; "
              f"{f'{n_micro} x ' if n_micro > 1 else ''}{episodes.describe()}; inner loop {a.inner_steps} SGD steps "
              f"at lr {a.inner_lr} on {a.inner_params}" + (f" (rank {a.inner_rank} deltas)" if a.inner_rank else "")
              + (f", {len(inner)} step sizes learned" if inner else ""))

    log_path = out / "log.jsonl"
    dyn_every = 0 if a.dynamics_every == 0 else (a.dynamics_every or a.eval_every)

    def start_outputs():  # rank 0: run.json, fresh logs, the dynamics recorder, the held-out texts
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({  # what compare.py needs without loading a checkpoint
            "config": {k: v for k, v in vars(a).items() if k != "given"}, "data_meta": dmeta, "world_size": world,
            "model_args": vars(margs), "params": total, "non_embedding_params": non_emb}, indent=2, default=str))
        for p in (log_path, out / "dynamics.jsonl"):
            if not a.resume and p.exists():
                p.unlink()  # a fresh run starts fresh logs
        recorder = None
        if dyn_every:  # one fixed val batch, drawn once and then carried in the checkpoint
            probe = (ckpt or {}).get("dynamics_probe") or get_batch(
                val_tok, min(4, a.batch_size), a.block_size, a.seed, STREAM_PROBE, 0, "cpu")
            recorder = dynamics.Recorder(tuple(t.to(device) for t in probe), out / "dynamics.jsonl", ctx)
        return recorder, heldout.load_texts(a, episodes.tok)

    dyn, texts = ddp.agree(start_outputs, rank, world, "rank0") or (None, {})
    win = {"lm_ms": [], "meta_ms": [], "lm_loss": [], "sup_acc": [], "qry_acc": [], "meta_loss": []}

    def diverged(what, value, step):
        sys.exit(f"train.py: error: {what} is {value} at step {step}; {out / 'ckpt.pt'} still holds the last good "
                 "eval. Lower --lr, raise --warmup-steps or use --dtype float32, then --resume")

    def evaluate():  # rank 0 only
        row = {"step": state["step"], "tokens": state["tokens"], "flops": state["flops"],
               "elapsed_s": round(state["elapsed_s"], 3),
               "train_loss": float(np.mean(win["lm_loss"])) if win["lm_loss"] else None,
               "val_loss": val_loss(lm_model, val_tok, a, device, ctx), "lr": lr_at(state["step"], a),
               "ar_ms": float(np.mean(win["lm_ms"])) if win["lm_ms"] else None,
               "meta_ms": float(np.mean(win["meta_ms"])) if win["meta_ms"] else None,
               "meta_steps": state["meta_pos"], "lm_steps": state["lm_pos"],
               "meta_loss": float(np.mean(win["meta_loss"])) if win["meta_loss"] else None,
               "support_acc": float(np.mean(win["sup_acc"])) if win["sup_acc"] else None,
               "query_acc": float(np.mean(win["qry_acc"])) if win["qry_acc"] else None}
        if not math.isfinite(row["val_loss"]):  # never overwrite the last good checkpoint with a broken model
            diverged("val loss", row["val_loss"], state["step"])
        row |= metalib.evaluate(model, head, episodes.val, a, device, ctx, inner)  # fixed val episodes, before / after
        if inner:
            row["inner_lrs"] = metalib.inner_lrs_now(inner)
        if texts:
            row["eval_text"] = {n: heldout.text_loss(lm_model, t, episodes.tok.unk, a, device, ctx) for n, t in texts.items()}
        if a.sample_tokens:
            row["sample"] = heldout.sample(model, episodes.tok, a, device, dmeta["vocab_size"])
        with open(log_path, "a") as f:  # the row before the checkpoint: on resume, rows past it are cut
            f.write(json.dumps(row) + "\n")
        tqdm.write(f"eval step {row['step']}: val loss {row['val_loss']:.4f} (ppl {math.exp(row['val_loss']):.1f}), "
                   f"val episodes acc {row['episode_acc_before']:.3f} -> {row['episode_acc_after']:.3f}"
                   + "".join(f", {n} {v['bpb']:.3f} bits/byte" for n, v in row.get("eval_text", {}).items()))
        if "sample" in row:
            tqdm.write(f"sample: {a.sample_prompt + row['sample']!r}")
        ck = {
            "model": model.state_dict(), "meta_head": head.state_dict(), "inner_lrs": inner.state_dict(),
            "optimizer": opt.state_dict(),
            "model_args": vars(margs),
            "step": state["step"], "state": dict(state), "rng": checkpoint.rng_state(), "data_meta": dmeta,
            "config": {k: v for k, v in vars(a).items() if k != "given"},
            "vocab_map": None if episodes.tok.old_of_new is None else torch.from_numpy(episodes.tok.old_of_new),
            "dynamics_probe": tuple(t.cpu() for t in dyn.probe) if dyn else None}
        checkpoint.save(out / "ckpt.pt", ck)
        if a.save_every and state["step"] % a.save_every == 0:  # a trajectory for eval_ner.py and the dynamics
            checkpoint.save(out / f"ckpt_step{state['step']}.pt", ck)
        for v in win.values():
            v.clear()

    def rank0_work(measure, ev):  # dynamics before evaluate(), so that the checkpoint follows it
        if measure and dyn:
            dyn.measure(model, state["step"])
        if ev:
            evaluate()

    if not a.resume:
        ddp.agree(lambda: rank0_work(True, True), rank, world, "rank0")
    bar = tqdm(range(state["step"], a.max_steps), initial=state["step"], total=a.max_steps, desc="train",
               disable=None if rank == 0 else True)
    for _ in bar:
        lr = lr_at(state["step"], a)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        coin = np.random.default_rng([a.seed, STREAM_COIN, state["step"]]).random()  # the same on every rank
        kind = "meta" if a.meta and coin < a.hybrid_ratio and state["step"] >= a.meta_start else "lm"
        loss, stats, tokens = step_grads(net, kind, state[f"{kind}_pos"], a, train_tok, episodes, device, ctx, rank, world)
        state[f"{kind}_pos"] += 1
        state["tokens"] += tokens
        state["flops"] += metalib.step_flops(a, margs) * n_micro if kind == "meta" else lm_flops
        if not math.isfinite(loss):  # stop before the bad step touches the weights
            diverged(f"{kind} loss", loss, state["step"] + 1)
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip if a.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        state["step"] += 1
        state["elapsed_s"] += dt
        win[f"{kind}_ms"].append(1000 * dt)
        win[f"{kind}_loss"].append(loss)
        if stats.get("support_acc") is not None:  # lm episodes have no classes
            win["sup_acc"].append(stats["support_acc"])
        if stats.get("query_acc") is not None:
            win["qry_acc"].append(stats["query_acc"])
        if state["step"] % a.log_every == 0 or state["step"] == a.max_steps:
            msg = f"step {state['step']:>6} {kind:>4} loss {loss:.4f} lr {lr:.2e} |g| {gnorm:.2f} {1000 * dt:7.1f} ms/step"
            if kind == "lm":
                msg += f" {lm_tokens / dt:9,.0f} tok/s"
                if peak:
                    msg += f" MFU {lm_flops / dt / peak / world:.1%}"
            tqdm.write(msg)
        bar.set_postfix(loss=f"{loss:.3f}", kind=kind)
        measure = dyn_every and state["step"] % dyn_every == 0
        ev = state["step"] % a.eval_every == 0 or state["step"] == a.max_steps or (
            a.save_every and state["step"] % a.save_every == 0)
        if measure or ev:  # the other ranks wait, and leave with rank 0's error if it has one
            ddp.agree(lambda: rank0_work(measure, ev), rank, world, "rank0")
    bar.close()
    print(f"done: {state['step']} steps ({state['lm_pos']} LM, {state['meta_pos']} meta), "
          f"{state['tokens']:,} tokens, {state['flops']:.3g} FLOPs, {state['elapsed_s']:.1f} s; log in {log_path}")


if __name__ == "__main__":
    main()
