r"""
Pretrain a Llama-style decoder with next-token prediction, optionally mixed with first-order
MAML episodes (--meta), on one GPU or CPU, or on several under torchrun (DDP). No Trainer
class: the loop is loop() below, one screen, top to bottom.

    python train.py --meta --size 11m    # the main job: on a GPU the paper's shapes on TinyStories; on a
                                         # CPU the CPU recipe (--recipe) on the embedded corpus, minutes
    python train.py --size 11m           # the same without meta steps
    python train.py --data-dir data/enwiki8k --out-dir out/vanilla --size 11m --device cpu \
        --max-steps 300 --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30 --eval-every 25
    torchrun --standalone --nproc_per_node 4 train.py --meta --size 65m --batch-size 8 --grad-accum 8

Batches are pure functions of (seed, position): the LM stream, the val batches, the meta coin
and the episodes each draw from their own counter (data.py), so a run is reproducible,
resumable, and a meta run sees exactly the LM batches of the vanilla run with the same seed,
in the same order. An optimiser step is world size x --grad-accum micro-batches (or
episodes); rank r takes micro-batches r*N .. r*N+N-1 (N = --grad-accum): 2 ranks x 1 see what
1 rank x 2 sees.
"""
import argparse
import json
import math
import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

import data as datalib
import learners
import meta
import tasks
from data import STREAM_COIN, STREAM_LM, STREAM_PROBE, STREAM_VAL, VAL_SEED
from model import Transformer, preset
from plumbing import checkpoint, config, ddp, heldout, outputs
from plumbing.accounting import count_model, flops_per_token
from plumbing.errors import UserError
from tasks.base import host_to, use_compile


def get_batch(tokens, B, T, seed, stream, pos, device, micro=0, n_micro=1):
    """Micro-batch `micro` of `n_micro` of batch number `pos` of a stream: B random windows of T+1
    tokens, inputs and shifted targets. The n_micro micro-batches together are the one batch of
    B * n_micro windows drawn at `pos`, so accumulation and ranks split a batch, not change it."""
    rng = np.random.default_rng([seed, stream, pos])
    starts = rng.integers(0, len(tokens) - T - 1, size=B * n_micro)[micro * B : (micro + 1) * B]
    xy = torch.from_numpy(np.stack([tokens[s : s + T + 1].astype(np.int64) for s in starts]))  # (B, T+1)
    xy = host_to(xy, device)
    return xy[:, :-1], xy[:, 1:]  # (B, T) each


def lr_at(step, a):
    """Linear warmup to --lr, then cosine decay to --min-lr-frac * lr over --decay-steps."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    decay = a.decay_steps or a.max_steps
    t = min(1.0, (step - a.warmup_steps) / max(1, decay - a.warmup_steps))
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class Run:
    """Everything the loop uses, built once by setup()."""
    a: argparse.Namespace
    rank: int
    world: int
    device: str
    dtype: str
    ctx: object  # autocast, or nullcontext
    out: Path
    data: tuple  # (data meta, train tokens, val tokens, tokenizer)
    task: object  # tasks.base.Task, or None: a run with no meta step and no val episode
    learner: meta.Learner
    model: Transformer
    lm_model: nn.Module  # the model, or its compiled form, for LM steps and the val loss
    head: nn.Module  # the episode head (task.make_head)
    inner: nn.ParameterDict  # tensors the learner meta-learns besides the model (Meta-SGD's step sizes)
    net: nn.Module  # Objective, wrapped in DDP when world > 1
    opt: torch.optim.Optimizer
    meta_opt: object  # a second AdamW for meta steps (--meta-moments separate), or None
    state: dict  # step, lm_pos, meta_pos, tokens, flops, elapsed_s: what the checkpoint keeps
    flops: dict  # FLOPs of one LM and one meta step
    saved_step: object = None  # the step of the checkpoint on disk
    dyn_every: int = 0  # steps between dynamics measurements (0: none), the same on every rank
    dyn: object = None  # dynamics.Recorder on rank 0, or None
    texts: dict = field(default_factory=dict)  # --eval-text files
    clock: object = None  # outputs.Clock
    win: dict = field(default_factory=lambda: {k: [] for k in ("lm_ms", "meta_ms", "lm_loss", "meta_loss",
                                                               "support_acc", "query_acc")})


# ----------------------------------------------------------------------------- one optimiser step

class Objective(nn.Module):
    """The decoder, the episode head and the learner's own tensors as one module whose forward is
    a whole step's loss: what DDP wraps, so that one backward all-reduces every gradient, the
    meta-gradient included. A meta step's inner loop (torch.autograd.grad) runs inside forward,
    before DDP listens for gradients, so it all-reduces nothing."""

    def __init__(self, model, lm_model, head, inner, task, learner):
        super().__init__()
        self.model, self.lm_model, self.head, self.inner, self.task, self.learner = model, lm_model, head, inner, task, learner

    def forward(self, kind, batch):
        if kind == "lm":
            return self.lm_model(*batch), {}  # next-token loss
        return meta.meta_loss(self.model, self.head, self.task, batch, self.learner)


def step_grads(run, a, kind, pos):
    """The gradients of one optimiser step, left in .grad: --grad-accum micro-batches (LM) or
    episodes (meta) on this rank, averaged with DDP's all-reduce after the last one. Returns the
    mean loss over all ranks (every rank then takes the same NaN decision), the mean episode
    accuracies on this rank, and the step's tokens. Loss and accuracies stay tensors: nothing
    in a step waits for the GPU to finish (the log line reads them, every --log-every steps)."""
    n, total, stats, tokens = run.world * a.grad_accum, 0.0, [], 0
    for i in range(a.grad_accum):
        j = run.rank * a.grad_accum + i  # this micro-batch's index among the step's n
        if kind == "meta":  # episode numbers stay pure functions of (meta position, j)
            batch = run.task.train_episode(pos * n + j, run.device)
            tokens += batch["tokens"]
        else:
            batch = get_batch(run.data[1], a.batch_size, a.block_size, a.seed, STREAM_LM, pos, run.device, j, n)
            tokens += a.batch_size * a.block_size
        sync = run.world == 1 or i == a.grad_accum - 1  # all-reduce once, after the last micro-batch
        with nullcontext() if sync else run.net.no_sync():
            with run.ctx:
                loss, st = run.net(kind, batch)
            ((a.meta_weight if kind == "meta" else 1.0) * loss / a.grad_accum).backward()
        total = total + loss.detach() / n
        stats.append(st)
    if run.world > 1:
        dist.all_reduce(total)  # the sum over ranks of their share: the mean over all n
    mean = {k: torch.stack([s[k] for s in stats]).mean() if stats[0][k] is not None else None for k in stats[0]}
    return total, mean, tokens * run.world


def train_step(run, a, kind, pos):
    """One optimiser step of `kind` ("lm" or "meta") at stream position pos: gradients,
    clipping, AdamW. Returns tensors, so that the GPU's queue never drains inside a step;
    loop() checks the loss for NaN where it prints it."""
    loss, stats, tokens = step_grads(run, a, kind, pos)
    params = [*run.model.parameters(), *run.head.parameters(), *run.inner.parameters()]
    gnorm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip if a.grad_clip > 0 else float("inf"))
    opt = run.meta_opt if kind == "meta" and run.meta_opt else run.opt
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, stats, tokens, gnorm


def diverged(run, what, value, step):
    raise UserError(f"{what} is {value} at step {step}; {run.out / 'ckpt.pt'} still holds the last good eval. Lower "
                    "--lr, raise --warmup-steps or use --dtype float32, then --resume")


# ----------------------------------------------------------------------------- the loop

def loop(run, a):
    """The step loop: set the lr, draw the coin, take an LM or a meta step, log, evaluate."""
    state = run.state
    bar = tqdm(range(state["step"], a.max_steps), initial=state["step"], total=a.max_steps, desc="train",
               disable=None if run.rank == 0 else True)
    for _ in bar:
        lr = lr_at(state["step"], a)
        for o in filter(None, (run.opt, run.meta_opt)):
            for g in o.param_groups:
                g["lr"] = lr
        coin = np.random.default_rng([a.seed, STREAM_COIN, state["step"]]).random()  # the same on every rank
        kind = "meta" if a.meta and coin < a.hybrid_ratio and state["step"] >= a.meta_start else "lm"
        run.clock.start_step()
        loss, stats, tokens, gnorm = train_step(run, a, kind, state[f"{kind}_pos"])
        dt = run.clock.end_step(state)
        state[f"{kind}_pos"] += 1
        state["tokens"] += tokens
        state["flops"] += run.flops[kind]
        state["step"] += 1
        run.win[f"{kind}_ms"].append(1000 * dt)
        run.win[f"{kind}_loss"].append(loss)
        for k in ("support_acc", "query_acc"):  # lm episodes have no classes
            if stats.get(k) is not None:
                run.win[k].append(stats[k])
        if state["step"] % a.log_every == 0 or state["step"] == a.max_steps:  # the one host sync of a log interval
            if not math.isfinite(loss := loss.item()):  # the checkpoint on disk is the last good eval's
                diverged(run, f"{kind} loss", loss, state["step"])
            tqdm.write(outputs.step_line(run, kind, loss, lr, gnorm, dt))
            bar.set_postfix(loss=f"{loss:.3f}", kind=kind)
        measure = run.dyn_every and state["step"] % run.dyn_every == 0
        ev = state["step"] % a.eval_every == 0 or state["step"] == a.max_steps or (
            a.save_every and state["step"] % a.save_every == 0)
        if measure or ev:  # the other ranks wait, and leave with rank 0's error if it has one
            ddp.agree(lambda: rank0_work(run, a, measure, ev), run.rank, run.world, "rank0")
    bar.close()


def train(a, rank, world, device, dtype, ctx):
    run = setup(a, rank, world, device, dtype, ctx)
    a, state = run.a, run.state
    run.clock = outputs.Clock(run, a)
    if not a.resume:  # the initial model's eval, which also times an eval for the estimate
        run.clock.time_eval(lambda: ddp.agree(lambda: rank0_work(run, a, True, True), rank, world, "rank0"))
    try:
        loop(run, a)
    except KeyboardInterrupt:
        if run.saved_step is None:
            raise KeyboardInterrupt from None  # nothing saved yet
        raise Interrupted(f"interrupted at step {state['step']} of {a.max_steps}; {run.out / 'ckpt.pt'} holds step "
                          f"{run.saved_step}") from None
    print(f"done: {state['step']} steps ({state['lm_pos']} LM, {state['meta_pos']} meta), {state['tokens']:,} tokens, "
          f"{state['flops']:.3g} FLOPs, {state['elapsed_s']:.1f} s; log in {run.out / 'log.jsonl'}")


class Interrupted(Exception):
    """Ctrl-C during training; the message says what was saved and how to continue."""


# ----------------------------------------------------------------------------- evaluation, log, checkpoint

def rank0_work(run, a, measure, ev):
    """Dynamics before the eval, so that the checkpoint follows both."""
    if measure and run.dyn:
        run.dyn.measure(run.model, run.state["step"])
    if ev:
        row, lines = evaluate(run, a)
        with open(run.out / "log.jsonl", "a") as f:  # the row before the checkpoint: on resume, rows past it are cut
            f.write(json.dumps(row) + "\n")
        for line in lines:
            tqdm.write(line)
        save_checkpoint(run, a)
        for v in run.win.values():
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


def evaluate(run, a):
    """One log row and the lines printed with it: the window's training means, the val loss, the
    fixed val episodes before and after the inner loop, held-out text, a sample."""
    mean = lambda k: float(np.mean([float(v) for v in run.win[k]])) if run.win[k] else None  # reads the steps' tensors
    s = run.state
    row = {"step": s["step"], "tokens": s["tokens"], "flops": s["flops"], "elapsed_s": round(s["elapsed_s"], 3),
           "train_loss": mean("lm_loss"), "val_loss": val_loss(run.lm_model, run.data[2], a, run.device, run.ctx),
           "lr": lr_at(s["step"], a), "ar_ms": mean("lm_ms"), "meta_ms": mean("meta_ms"),
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
    if run.texts:
        row["eval_text"] = {n: heldout.text_loss(run.lm_model, t, run.data[3].unk, a, run.device, run.ctx)
                            for n, t in run.texts.items()}
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
          "dynamics_probe": tuple(t.cpu() for t in run.dyn.probe) if run.dyn else None}
    checkpoint.save(run.out / "ckpt.pt", ck)
    run.saved_step = step
    if a.save_every and step % a.save_every == 0:  # a trajectory for eval_ner.py and the dynamics
        checkpoint.save(run.out / f"ckpt_step{step}.pt", ck)


# ----------------------------------------------------------------------------- set-up

def setup(a, rank, world, device, dtype, ctx):
    """Everything the loop uses, built once: data, task, model, optimiser, outputs."""
    out, ckpt = Path(a.out_dir), None
    if a.resume:
        ckpt, a = ddp.agree(lambda: checkpoint.resume_config(a, out, cut_logs=rank == 0), rank, world)
    data_dir, dmeta, train_tok, val_tok = ddp.agree(lambda: datalib.load(a, ckpt), rank, world, "rank0_first")
    if data_dir != a.data_dir:  # the default corpus: the run records the one it trained on
        a = argparse.Namespace(**{**vars(a), "data_dir": data_dir})
    tok = datalib.Tokenizer(dmeta, data_dir)
    task = None  # a run that takes no meta step and scores no episode needs no episode index
    if a.meta or a.eval_episodes:
        task = ddp.agree(lambda: tasks.make(a, Path(data_dir), dmeta, train_tok, val_tok, tok), rank, world, "rank0_first")
    learner = learners.make(a)
    torch.manual_seed(a.seed)
    if ckpt:
        model = checkpoint.build_model(ckpt, device)
    else:
        model = Transformer(preset(a.size, dmeta["vocab_size"], a.block_size))
        learner.change_model(model)  # TARP's shifted matrices, TAMS's ops: made before the weights move
        model = model.to(device)
    head = (task.make_head(model.args.d_model, model.args.vocab_size) if task else nn.ParameterDict()).to(device)
    names = learner.fast_names(model, meta.adapted_names(model, learner)) + (task.head_names(head) if task else [])
    inner = (learner.learned(names) if task else nn.ParameterDict()).to(device)
    params = [*model.parameters(), *head.parameters(), *inner.parameters()]
    decay = [p for p in params if p.dim() >= 2]  # matrices decay; norm gains, temperature and step sizes do not
    no_decay = [p for p in params if p.dim() < 2]
    adamw = lambda: torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), fused=True)
    opt = adamw()
    # --meta-moments separate: meta steps get an AdamW of their own over the same weights, so that
    # their larger gradients do not inflate the second moments that scale every LM step
    meta_opt = adamw() if a.meta and a.meta_moments == "separate" else None
    state = {"step": 0, "lm_pos": 0, "meta_pos": 0, "tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    if ckpt:
        ddp.agree(lambda: checkpoint.load_state(ckpt, model, head, inner, opt, meta_opt, a, out), rank, world)
        state = ckpt["state"]
        checkpoint.set_rng_state(ckpt["rng"])
    if a.compile:  # LM steps run the compiled module; meta steps reach the decoder through a compiled functional_call
        use_compile()
    lm_model = torch.compile(model) if a.compile else model
    n_micro, non_emb = world * a.grad_accum, count_model(model)[1]
    per_token = lambda L, backward=True, lm_head=False: flops_per_token(model.args, L, backward, lm_head, non_emb)
    flops = {"lm": flops_per_token(model.args, a.block_size, non_emb=non_emb) * a.batch_size * a.block_size * n_micro,
             "meta": meta.step_flops(task, learner, per_token) * n_micro if a.meta else 0}
    run = Run(a=a, rank=rank, world=world, device=device, dtype=dtype, ctx=ctx, out=out,
              data=(dmeta, train_tok, val_tok, tok), task=task, learner=learner, model=model, lm_model=lm_model,
              head=head, inner=inner, net=ddp.wrap(Objective(model, lm_model, head, inner, task, learner), world, device),
              opt=opt, meta_opt=meta_opt, state=state, flops=flops, saved_step=ckpt["step"] if ckpt else None,
              dyn_every=0 if a.dynamics_every == 0 else (a.dynamics_every or a.eval_every))
    outputs.describe(run, a)
    probe = None
    if run.dyn_every:  # the batch the dynamics are measured on: drawn once, then carried in the checkpoint
        probe = (ckpt or {}).get("dynamics_probe") or get_batch(
            val_tok, min(4, a.batch_size), a.block_size, a.seed, STREAM_PROBE, 0, "cpu")
    run.dyn, run.texts = ddp.agree(lambda: outputs.start(run, a, probe), rank, world, "rank0") or (None, {})
    return run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(s) for s in argv]
    try:
        a = config.get_args(argv, description=__doc__)
        device, dtype, ctx = config.hardware(a.device, a.dtype)
        rank, world = ddp.setup(device)
        try:
            train(a, rank, world, device, dtype, ctx)
        finally:
            if world > 1:
                dist.destroy_process_group()
    except UserError as e:
        sys.exit(f"train.py: error: {e}")
    except (Interrupted, KeyboardInterrupt) as e:  # one line, no traceback; 130 = killed by SIGINT
        again = "python train.py " + " ".join(shlex.quote(s) for s in argv if s != "--resume")
        if isinstance(e, Interrupted):
            print(f"train.py: {e}; continue with: {again} --resume", file=sys.stderr)
        else:
            print(f"train.py: interrupted before the first checkpoint; nothing to resume: {again.strip()}", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
