"""
The run's configuration, in one place: train.py's flags, the CPU recipe, and the resolution
and checks of the flags that are not any one plug-in's. A task's flags, defaults and checks
live in its file (tasks/), a variant's in its own (learners/); get_args gathers them.

Nothing downstream writes into the args: get_args returns them resolved (every default that
depends on another flag filled in here, where -h can show it), and the library reads them.
"""
import argparse
import sys
from contextlib import nullcontext

import torch

import data as datalib
import learners
import tasks
from model import PRESETS
from plumbing.errors import UserError

# The machine chooses the shape. --recipe auto runs the paper's GPU shapes (the flags' own
# defaults) on a GPU, and on a CPU, when no shape flag is given, this recipe: a trimmed
# vocabulary, a small batch and a few hundred steps, which finish in minutes on 2 cores (the
# README's quick start). A flag typed on the command line always wins over the recipe.
CPU_RECIPE = {"batch_size": 16, "block_size": 128, "max_steps": 300, "lr": 2e-3, "warmup_steps": 30,
              "eval_every": 50}
SHAPE_FLAGS = ("batch_size", "block_size", "max_steps", "grad_accum")  # any of these typed: no CPU recipe

# Counts that must be at least 1, or at least 0 (where 0 has a documented meaning).
POSITIVE = ("batch_size", "block_size", "grad_accum", "eval_every", "eval_batches", "log_every",
            "n_way", "k_shot", "n_query", "episode_len")
NON_NEGATIVE = ("max_steps", "eval_episodes", "sample_tokens", "save_every", "dynamics_every", "warmup_steps", "decay_steps",
                "meta_start", "inner_steps")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """-h keeps the docstring's layout and shows every flag's default."""


def add_train_args(p):
    g = p.add_argument_group("a first run needs only these")
    g.add_argument("--data-dir", default=None, help="prepared by data.py (default: TinyStories in data/tinystories, "
                                                    "made if missing; the embedded corpus, corpus/, under the CPU "
                                                    "recipe or when TinyStories cannot be downloaded)")
    g.add_argument("--out-dir", default="out", help="ckpt.pt, log.jsonl and dynamics.jsonl go here")
    g.add_argument("--size", default="11m", choices=list(PRESETS), help="pico-decoder preset")
    g.add_argument("--meta", action="store_true", help="mix first-order MAML steps into pretraining")
    g.add_argument("--task", default="smlmt", choices=tasks.names(), help="episode kind: tasks/NAME.py")
    g.add_argument("--max-steps", type=int, default=20000, help="optimiser steps (LM and meta together; 0 = evaluate the initial model only)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on GPUs that support it, else float32")
    g.add_argument("--seed", type=int, default=1337, help="seeds the init and every data stream")
    g.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt (flags given again override)")
    g.add_argument("--recipe", default="auto", choices=["auto", "cpu", "paper"],
                   help="auto: the paper's GPU shapes on a GPU; on a CPU with no shape flag (--batch-size, --block-size, "
                        "--max-steps, --grad-accum), the CPU recipe: " + ", ".join(
                            f"--{k.replace('_', '-')} {v}" for k, v in CPU_RECIPE.items())
                        + f" and a {datalib.CPU_VOCAB:,}-id vocabulary, minutes on 2 cores. paper: the defaults shown here")
    g = p.add_argument_group("research knobs: optimisation")
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
    g.add_argument("--compile", action="store_true", help="torch.compile the model (LM steps and the decoder passes "
                                                          "of meta steps)")
    g = p.add_argument_group("research knobs: evaluation and logging")
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
    add_meta_args(p)


def add_meta_args(p):
    """The episode and inner-loop flags, then each task's and each variant's own: train.py's, and
    tools/inspect_episodes.py's, so that an episode inspected there is the episode a run with the
    same flags trains on."""
    table = lambda k: ", ".join(f"{n} {tasks.get(n).DEFAULTS[k]}" for n in tasks.names())
    g = p.add_argument_group("research knobs: meta-learning (defaults marked * come from the --task's file)")
    g.add_argument("--hybrid-ratio", type=float, default=0.5, help="fraction of steps that are meta steps")
    g.add_argument("--meta-start", type=int, default=None,
                   help="LM-only steps before the first meta step (default: half of --max-steps; 0 = the paper's). "
                        "The coin and the LM stream are unchanged, so LM batches still match the vanilla run's")
    g.add_argument("--n-way", type=int, default=None,
                   help=f"* classes per episode ({table('n_way')}; None: as many as make one LM batch of tokens, 4 to 32)")
    g.add_argument("--k-shot", type=int, default=None,
                   help=f"* support windows per class (pico: masked support positions; lm: support sequences): {table('k_shot')}")
    g.add_argument("--n-query", type=int, default=4, help="query windows per class (lm: query sequences; pico: 1 position)")
    g.add_argument("--episode-len", type=int, default=64, help="tokens per smlmt / lm window (pico uses --block-size)")
    g.add_argument("--inner-steps", type=int, default=10, help="inner steps on the support set")
    g.add_argument("--inner-lr", type=float, default=None,
                   help=f"* inner-loop step size: {table('inner_lr')}. smlmt: in logit units (tasks/smlmt.py)")
    g.add_argument("--inner-params", default=None,
                   help=f"* what adapts: head, top-K (last K blocks + final norm + head) or all: {table('inner_params')}")
    g.add_argument("--meta-weight", type=float, default=1.0, help="scale of the query loss in a meta step")
    g.add_argument("--meta-moments", default="shared", choices=["shared", "separate"],
                   help="AdamW moments of meta steps: shared with LM steps (the paper's), or an AdamW of their own over "
                        "the same weights, so that larger meta gradients do not shrink the LM steps")
    for n in tasks.names():
        tasks.get(n).add_flags(p.add_argument_group(f"task {n} (--task {n})"))
    learners.add_flags(p)


def default_n_way(k_shot, n_query, episode_len, batch_size, block_size):
    """smlmt: support + query tokens ~ one LM batch, so a meta step and an LM step see as many
    tokens; between 4 (chance 1/4; small batches get more tokens per episode than per LM
    step) and the paper's 32. pico: the released trainer's 32."""
    per_class = (k_shot + n_query) * episode_len
    return int(min(32, max(4, round(batch_size * block_size / per_class))))


def recipe(a, given):
    """"cpu" or "paper": which shapes a run takes (see CPU_RECIPE)."""
    if getattr(a, "recipe", "paper") != "auto":
        return getattr(a, "recipe", "paper")
    on_cpu = a.device == "cpu" or (a.device == "auto" and not torch.cuda.is_available())
    return "cpu" if on_cpu and not given & set(SHAPE_FLAGS) else "paper"


def resolve(a, given=()):
    """A new namespace with the recipe, the per-task defaults and the other defaults that depend
    on flags filled in (flags in `given`, typed on the command line, are kept); a is left as it was."""
    r = argparse.Namespace(**vars(a))
    if "recipe" in a:
        r.recipe = recipe(a, set(given))
        for k, v in (CPU_RECIPE.items() if r.recipe == "cpu" else ()):
            if k not in given:
                setattr(r, k, v)
        a = argparse.Namespace(**vars(r))  # the defaults below depend on the recipe's shapes
    for k, v in (tasks.get(a.task).DEFAULTS | learners.defaults(a)).items():  # a variant's over the task's
        if getattr(a, k) is None:
            setattr(r, k, v)
    if r.n_way is None:
        r.n_way = default_n_way(r.k_shot, a.n_query, a.episode_len, a.batch_size, a.block_size)
    if getattr(a, "max_steps", None) is not None and a.meta_start is None:
        r.meta_start = a.max_steps // 2  # meta steps from scratch hold the LM on the unigram plateau (results/)
    if "data_dir" in a and a.data_dir is None:
        r.data_dir = datalib.DEFAULT_DATA_DIR[r.recipe]
    return r


def check_counts(a):
    """Counts below their least value (UserError); before anything is computed from them."""
    for names, least in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
        for k in names:
            if getattr(a, k, None) is not None and getattr(a, k) < least:
                raise UserError(f"--{k.replace('_', '-')} {getattr(a, k)}: must be at least {least}")
    return a


def check(a):
    """Refuse values that cannot run (UserError, naming the flag and what to do): the shared flags
    here, then every task's and every variant's own."""
    spec = check_counts(a).inner_params
    if getattr(a, "lr", 1) <= 0:  # (inspect_episodes.py has no optimiser flags)
        raise UserError(f"--lr {a.lr:g}: must be > 0")
    for k in ("weight_decay", "grad_clip", "inner_lr"):  # a negative inner lr climbs the support loss
        if getattr(a, k, 0) < 0:
            raise UserError(f"--{k.replace('_', '-')} {getattr(a, k):g}: must be at least 0")
    if not 0 <= a.hybrid_ratio <= 1:
        raise UserError(f"--hybrid-ratio {a.hybrid_ratio}: a fraction of steps, between 0 and 1")
    if not (spec in ("head", "all") or (spec.startswith("top-") and spec[4:].isdigit())):
        raise UserError(f"--inner-params {spec!r}: use head, top-K (e.g. top-2) or all")
    for n in tasks.names():
        tasks.get(n).check(a)
    learners.check(a)
    return a


def get_args(argv=None, description=None):
    """train.py's args, resolved and checked. `given` records the flags typed on the command
    line (by dest): a resumed run takes those over the saved run's."""
    p = argparse.ArgumentParser(prog="train.py", description=description, formatter_class=HelpFormatter,
                                allow_abbrev=False)
    add_train_args(p)
    args = p.parse_args(argv)
    typed = [s.split("=")[0] for s in (argv if argv is not None else sys.argv[1:]) if s.startswith("--")]
    given = {p._option_string_actions[s].dest for s in typed if s in p._option_string_actions}
    a = check(resolve(check_counts(args), given))
    a.given = given
    return a


def cpu_has_bf16():
    """Whether this CPU has bf16 matrix instructions (Linux: /proc/cpuinfo); True where unknown."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def hardware(device="auto", dtype="auto"):
    """(device, dtype, autocast context) for --device and --dtype, the one place they are set up:
    auto picks cuda when one is visible, and bfloat16 autocast on GPUs that support it. TF32
    matmuls on CUDA (float32 inputs, 10-bit products: free speed, the loss does not notice)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device, dtype=torch.bfloat16)
    return device, dtype, ctx
