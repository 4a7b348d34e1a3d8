"""
The run's configuration, in one place: every flag of train.py, the per-task defaults table,
and the checks that refuse combinations that cannot run. Also UserError, the one error type
library code raises; each script prints it as `prog: error: ...`.

Nothing downstream writes into the args: get_args returns them resolved (every default that
depends on another flag filled in here, where -h can show it), and the library reads them.
"""
import argparse
import sys
from contextlib import nullcontext

import torch

from model import PRESETS


class UserError(Exception):
    """Bad input the user can fix. The message names the file or flag and what to do next."""


# Per-task defaults, resolved when the args are read. The inner-loop step sizes come from the
# sweep in results/README.md (inspect_episodes.py --score --sweep-lr on a 600-step vanilla
# checkpoint): the step that lowers the val episodes' query loss most without hurting their
# accuracy. smlmt takes 8 shots, not 4: with 4 the prototypes are already the best head the
# support set justifies and the inner loop only sharpens the logits (a single temperature beats
# it); with 8, adapting the head beats that temperature. n_way None: as many classes as make
# one LM batch of tokens (default_n_way).
TASK_DEFAULTS = {
    #         inner_lr  inner_params  k_shot  n_way
    "smlmt": (2.0,      "head",       8,      None),
    "pico":  (0.1,      "head",       4,      32),  # the released trainer's 32 classes
    "lm":    (0.1,      "all",        4,      None),
}

# The machine chooses the shape. --recipe auto runs the paper's GPU shapes (the flags' own
# defaults) on a GPU, and on a CPU, when no shape flag is given, this recipe: a trimmed
# vocabulary, a small batch and a few hundred steps, which finish in minutes on 2 cores (the
# README's quick start). A flag typed on the command line always wins over the recipe.
INNER_LR_ADAMW = 3e-4  # --inner-opt adamw: the sweep in results/README.md (2026-12-02), for every task
CPU_RECIPE = {"batch_size": 16, "block_size": 128, "max_steps": 300, "lr": 2e-3, "warmup_steps": 30,
              "eval_every": 50}
CPU_VOCAB = 8192  # the embedded corpus is prepared with the 8,192 most frequent ids under the CPU recipe
SHAPE_FLAGS = ("batch_size", "block_size", "max_steps", "grad_accum")  # any of these typed: no CPU recipe
DEFAULT_DATA_DIR = {"paper": "data/tinystories", "cpu": f"data/tinyshakespeare{CPU_VOCAB // 1024}k"}

# Counts that must be at least 1, or at least 0 (where 0 has a documented meaning).
POSITIVE = ("batch_size", "block_size", "grad_accum", "eval_every", "eval_batches", "log_every",
            "n_way", "k_shot", "n_query", "episode_len", "min_word_count")
NON_NEGATIVE = ("max_steps", "eval_episodes", "sample_tokens", "save_every", "dynamics_every", "warmup_steps", "decay_steps",
                "meta_start", "inner_steps", "skip_top_words", "inner_rank")


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
    g.add_argument("--task", default="smlmt", choices=list(TASK_DEFAULTS), help="episode kind (see tasks/)")
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
                        + f" and a {CPU_VOCAB:,}-id vocabulary, minutes on 2 cores. paper: the defaults shown here")
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
    """The episode and learner flags: train.py's, and inspect_episodes.py's, so that an episode
    inspected there is the episode a run with the same flags trains on."""
    table = lambda col: ", ".join(f"{t} {row[col]}" for t, row in TASK_DEFAULTS.items())
    g = p.add_argument_group("research knobs: meta-learning (defaults marked * come from TASK_DEFAULTS per --task)")
    g.add_argument("--hybrid-ratio", type=float, default=0.5, help="fraction of steps that are meta steps")
    g.add_argument("--meta-start", type=int, default=None,
                   help="LM-only steps before the first meta step (default: half of --max-steps; 0 = the paper's). "
                        "The coin and the LM stream are unchanged, so LM batches still match the vanilla run's")
    g.add_argument("--n-way", type=int, default=None,
                   help=f"* classes per episode ({table(3)}; None: as many as make one LM batch of tokens, 4 to 32)")
    g.add_argument("--k-shot", type=int, default=None,
                   help=f"* support windows per class (pico: masked support positions; lm: support sequences): {table(2)}")
    g.add_argument("--n-query", type=int, default=4, help="query windows per class (lm: query sequences; pico: 1 position)")
    g.add_argument("--episode-len", type=int, default=64, help="tokens per smlmt / lm window (pico uses --block-size)")
    g.add_argument("--episode-feature", default="before-mask", choices=["before-mask", "mask", "last", "mean"],
                   help="smlmt: the hidden state that represents a window (before-mask: the position that predicts "
                        "the masked word)")
    g.add_argument("--proto-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="smlmt: let the query gradient flow through the prototype initialisation (fo-Proto-MAML)")
    g.add_argument("--pico-drop-outside", action="store_true",
                   help="pico: ignore labels outside the class set instead of clamping them to class 0")
    g.add_argument("--skip-top-words", type=int, default=100, help="smlmt: skip the N most frequent token types")
    g.add_argument("--min-word-count", type=int, default=50, help="smlmt: skip token types rarer than this")
    g.add_argument("--inner-steps", type=int, default=10, help="inner steps on the support set")
    g.add_argument("--inner-lr", type=float, default=None,
                   help=f"* inner-loop SGD step size: {table(0)}. smlmt: in logit units (tasks/smlmt.py)")
    g.add_argument("--inner-opt", default="sgd", choices=["sgd", "adamw"],
                   help=f"inner optimiser: SGD, or AdamW with fresh moments per episode (betas 0.9, 0.999; default "
                        f"--inner-lr {INNER_LR_ADAMW:g}; the next-token MAML proposal's). Both first order")
    g.add_argument("--inner-schedule", default="constant", choices=["constant", "cosine"],
                   help="--inner-opt adamw: the step over the inner steps (cosine: linear warmup over the first tenth, "
                        "then cosine to 0)")
    g.add_argument("--inner-weight-decay", type=float, default=0.01, help="--inner-opt adamw: decoupled weight decay")
    g.add_argument("--inner-params", default=None,
                   help=f"* what adapts: head, top-K (last K blocks + final norm + head) or all: {table(1)}")
    g.add_argument("--learn-inner-lr", action="store_true",
                   help="first-order Meta-SGD: learn one log step size per adapted tensor, starting at --inner-lr")
    g.add_argument("--inner-rank", type=int, default=0,
                   help="adapt each adapted backbone matrix W as W + U V of rank R (U from zero, V fixed random "
                        "directions per episode; MLtD-style low-rank adaptation); 0 = adapt W itself")
    g.add_argument("--inner-rank-learn-v", action="store_true", help="with --inner-rank: adapt V as well as U")
    g.add_argument("--tarp", default=None, choices=["static", "dynamic"],
                   help="Meta-Learning the Difference's TARP (model.TARPLinear): every block matrix gains a shift V S U^T "
                        "of rank --inner-rank, S learned (static) or made from each token (dynamic); U, V and S are "
                        "learned in the outer loop, and the inner loop adapts them, not the matrices")
    g.add_argument("--outer", default="fomaml", choices=["fomaml", "reptile"],
                   help="outer rule: first-order MAML (query loss of the adapted weights) or Reptile (move toward "
                        "the weights adapted on support + query)")
    g.add_argument("--tams", action="store_true",
                   help="Meta-Learning the Difference's TAMS, in miniature: per episode a controller maps the support "
                        "set's mean token embedding to one op per block on the MLP path (its SwiGLU, skip, or a rank-16 "
                        "linear), straight-through; trained in the outer loop, not adapted. LM steps use the SwiGLU")
    g.add_argument("--meta-weight", type=float, default=1.0,
                   help="scale of the query loss in a meta step")
    g.add_argument("--meta-moments", default="shared", choices=["shared", "separate"],
                   help="AdamW moments of meta steps: shared with LM steps (the paper's), or an AdamW of their own over "
                        "the same weights, so that larger meta gradients do not shrink the LM steps")


def default_n_way(task, k_shot, n_query, episode_len, batch_size, block_size):
    """smlmt: support + query tokens ~ one LM batch, so a meta step and an LM step see as many
    tokens; between 4 (chance 1/4; small batches get more tokens per episode than per LM
    step) and the paper's 32. pico: the released trainer's 32."""
    if TASK_DEFAULTS[task][3] is not None:
        return TASK_DEFAULTS[task][3]
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
    inner_lr, inner_params, k_shot, _ = TASK_DEFAULTS[a.task]
    r.inner_lr = (INNER_LR_ADAMW if a.inner_opt == "adamw" else inner_lr) if a.inner_lr is None else a.inner_lr
    r.inner_params = inner_params if a.inner_params is None else a.inner_params
    r.k_shot = k_shot if a.k_shot is None else a.k_shot
    if a.n_way is None:
        r.n_way = default_n_way(a.task, r.k_shot, a.n_query, a.episode_len, a.batch_size, a.block_size)
    if getattr(a, "max_steps", None) is not None and a.meta_start is None:
        r.meta_start = a.max_steps // 2  # meta steps from scratch hold the LM on the unigram plateau (results/)
    if "data_dir" in a and a.data_dir is None:
        r.data_dir = DEFAULT_DATA_DIR[r.recipe]
    return r


def check_counts(a):
    """Counts below their least value (UserError); before anything is computed from them."""
    for names, least in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
        for k in names:
            if getattr(a, k, None) is not None and getattr(a, k) < least:
                raise UserError(f"--{k.replace('_', '-')} {getattr(a, k)}: must be at least {least}")
    return a


def check(a):
    """Refuse combinations that cannot run (UserError, naming the flag and what to do)."""
    spec = check_counts(a).inner_params
    if not 0 <= a.hybrid_ratio <= 1:
        raise UserError(f"--hybrid-ratio {a.hybrid_ratio}: a fraction of steps, between 0 and 1")
    if a.learn_inner_lr and a.inner_lr <= 0:
        raise UserError("--learn-inner-lr learns log step sizes, so --inner-lr must be > 0")
    if not (spec in ("head", "all") or (spec.startswith("top-") and spec[4:].isdigit())):
        raise UserError(f"--inner-params {spec!r}: use head, top-K (e.g. top-2) or all")
    if a.task == "lm" and spec == "head":
        raise UserError("--inner-params head needs --task smlmt or pico (lm has no episode head); use top-K or all")
    if a.tarp and (a.inner_rank < 1 or spec == "head" or a.inner_rank_learn_v):
        raise UserError(f"--tarp {a.tarp} needs --inner-rank R >= 1 (the shift's rank) and --inner-params top-K or all "
                        "(the blocks whose shifts adapt); --inner-rank-learn-v belongs to the cheap variant without --tarp")
    if a.inner_rank < 0 or (a.inner_rank and spec == "head"):
        raise UserError(f"--inner-rank {a.inner_rank}: a rank >= 1 adapts backbone matrices, so it needs "
                        "--inner-params top-K or all (0 = full-rank)")
    if a.inner_rank_learn_v and not a.inner_rank:
        raise UserError("--inner-rank-learn-v needs --inner-rank R >= 1")
    if a.outer == "reptile" and a.task == "smlmt" and spec == "head":
        raise UserError("--outer reptile moves the weights the inner loop adapts, and smlmt's head is rebuilt from "
                        "prototypes every episode: use --inner-params top-K or all")
    if a.outer == "reptile" and (a.inner_steps < 1 or a.inner_lr <= 0):
        raise UserError("--outer reptile moves toward the adapted weights: it needs --inner-steps >= 1 and "
                        "--inner-lr > 0")
    if a.outer == "reptile" and a.learn_inner_lr:
        raise UserError("--learn-inner-lr learns step sizes from a query loss, which --outer reptile does not have; "
                        "use --outer fomaml")
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
