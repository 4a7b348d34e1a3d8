r"""
Pretrain a Llama-style decoder with next-token prediction, optionally mixed with first-order
MAML episodes (--meta), on one GPU or CPU, or on several under torchrun (DDP). No Trainer
class: the loop is loop() below, one screen, top to bottom.

    python train.py --meta --size 11m    # on a GPU the paper's shapes on TinyStories; on a CPU the CPU
                                         # recipe (--recipe) on the embedded corpus, minutes
    python train.py --size 11m           # the same without meta steps
    torchrun --standalone --nproc_per_node 4 train.py --meta --size 65m --batch-size 8 --grad-accum 8

Batches are pure functions of (seed, position): the LM stream, the val batches, the meta coin and the
episodes each draw from their own counter (data.py), so a run is reproducible, resumable, and a meta run
sees exactly the LM batches of the vanilla run with the same seed, in the same order. An optimiser step is
world size x --grad-accum micro-batches (or episodes); rank r takes micro-batches r*N .. r*N+N-1
(N = --grad-accum): 2 ranks x 1 see what 1 rank x 2 sees.
"""
import argparse
import math
import shlex
import sys
from contextlib import nullcontext
from dataclasses import dataclass
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
from data import STREAM_COIN, STREAM_LM, get_batch
from model import Transformer, preset
from plumbing import accounting, checkpoint, config, ddp, outputs
from plumbing.errors import UserError
from plumbing.tensors import use_compile


def lr_at(step, a):
    """Linear warmup to --lr, then cosine decay to --min-lr-frac * lr over --decay-steps."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    decay = a.decay_steps or a.max_steps
    t = min(1.0, (step - a.warmup_steps) / max(1, decay - a.warmup_steps))
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def adamw(params, lr, weight_decay):  # matrices decay; norm gains, temperatures and step sizes do not
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), fused=True)


@dataclass
class Run:
    """Everything the loop uses, built once by setup()."""
    a: argparse.Namespace
    rank: int
    world: int
    device: str
    ctx: object  # autocast, or nullcontext
    data: tuple  # (data meta, train tokens, val tokens, tokenizer)
    task: object  # tasks.base.Task, or None: a run with no meta step and no val episode
    learner: meta.Learner  # FOMAML with the variants the flags select (learners/)
    model: Transformer
    lm_model: nn.Module  # the model, or its compiled form, for LM steps and the val loss
    head: nn.Module  # the episode head (task.make_head)
    inner: nn.ParameterDict  # tensors the learner meta-learns besides the model (Meta-SGD's step sizes)
    net: nn.Module  # Objective, wrapped in DDP when world > 1
    opt: torch.optim.Optimizer
    meta_opt: object  # a second AdamW for meta steps (--meta-moments separate), or None
    state: dict  # step, lm_pos, meta_pos, tokens, flops, elapsed_s: what the checkpoint keeps
    flops: dict  # FLOPs of one LM and one meta step
    log: outputs.Log  # what the run writes and prints: log rows, checkpoints, dynamics, the clock


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
        run.log.start_step()
        loss, stats, tokens, gnorm = train_step(run, a, kind, state[f"{kind}_pos"])
        dt = run.log.end_step(state)
        state[f"{kind}_pos"] += 1
        state["tokens"] += tokens
        state["flops"] += run.flops[kind]
        state["step"] += 1
        outputs.log_step(run, a, kind, loss, stats, lr, gnorm, dt, bar)  # every --log-every steps, a line
        measure = run.log.dyn_every and state["step"] % run.log.dyn_every == 0
        ev = state["step"] % a.eval_every == 0 or state["step"] == a.max_steps or (
            a.save_every and state["step"] % a.save_every == 0)
        if measure or ev:  # the other ranks wait, and leave with rank 0's error if it has one
            ddp.agree(lambda: outputs.measure_and_eval(run, a, measure, ev, lr_at(state["step"], a)), run.rank, run.world,
                      "rank0")
    bar.close()


def train(a, rank, world, device, dtype, ctx):
    run = setup(a, rank, world, device, dtype, ctx)
    a, state = run.a, run.state
    if not a.resume:  # the initial model's eval, which also times an eval for the estimate
        run.log.time_eval(lambda: ddp.agree(lambda: outputs.measure_and_eval(run, a, True, True, lr_at(0, a)), rank,
                                              world, "rank0"))
    try:
        loop(run, a)
    except KeyboardInterrupt:
        if run.log.saved_step is None:
            raise KeyboardInterrupt from None  # nothing saved yet
        raise Interrupted(f"interrupted at step {state['step']} of {a.max_steps}; {run.log.out / 'ckpt.pt'} holds step "
                          f"{run.log.saved_step}") from None
    print(f"done: {state['step']} steps ({state['lm_pos']} LM, {state['meta_pos']} meta), {state['tokens']:,} tokens, "
          f"{state['flops']:.3g} FLOPs, {state['elapsed_s']:.1f} s; log in {run.log.out / 'log.jsonl'}")


class Interrupted(Exception):
    """Ctrl-C during training; the message says what was saved and how to continue."""


# ----------------------------------------------------------------------------- set-up

def setup(a, rank, world, device, dtype, ctx):
    """Everything the loop uses, built once: data, task, model, optimiser, outputs."""
    ckpt = None
    if a.resume:
        ckpt, a = ddp.agree(lambda: checkpoint.resume_config(a, Path(a.out_dir), cut_logs=rank == 0), rank, world)
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
    opt = adamw(params, a.lr, a.weight_decay)
    # --meta-moments separate: meta steps get an AdamW of their own over the same weights, so that
    # their larger gradients do not inflate the second moments that scale every LM step
    meta_opt = adamw(params, a.lr, a.weight_decay) if a.meta and a.meta_moments == "separate" else None
    state = {"step": 0, "lm_pos": 0, "meta_pos": 0, "tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    if ckpt:
        ddp.agree(lambda: checkpoint.load_state(ckpt, model, head, inner, opt, meta_opt, a, Path(a.out_dir)), rank, world)
        state = ckpt["state"]
        checkpoint.set_rng_state(ckpt["rng"])
    if a.compile:  # LM steps run the compiled module; meta steps reach the decoder through a compiled functional_call
        use_compile()
    lm_model = torch.compile(model) if a.compile else model
    run = Run(a=a, rank=rank, world=world, device=device, ctx=ctx, data=(dmeta, train_tok, val_tok, tok), task=task,
              learner=learner, model=model, lm_model=lm_model, head=head, inner=inner,
              net=ddp.wrap(Objective(model, lm_model, head, inner, task, learner), world, device), opt=opt,
              meta_opt=meta_opt, state=state, flops=accounting.step_flops(model, a, task, learner, world),
              log=outputs.Log(a, device, dtype, state["step"], ckpt["step"] if ckpt else None))
    ddp.agree(lambda: run.log.begin(run, a, ckpt), rank, world, "rank0")
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
