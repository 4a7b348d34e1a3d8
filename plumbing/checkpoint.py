"""
Checkpoints you can trust, and logs that agree with them after a kill.

- A checkpoint is one plain dict of tensors and plain Python values (RNG states and the
  vocabulary map included), so torch.load(path, weights_only=True) reads it: loading a file
  someone sent you runs no code from it.
- It is written atomically (a temp file, then a rename), and the previous one is kept as
  ckpt.prev.pt. A kill at any moment leaves at least one complete checkpoint: the old one, the
  new one, or (killed between the two renames) the old one under its .prev name.
- build_model is the one place a decoder is rebuilt from a checkpoint (train.py --resume,
  eval_ner.py, inspect_episodes.py --score).
- On --resume, log.jsonl and dynamics.jsonl are cut back to the rows at or before the
  checkpoint's step. The run writes each log row *before* the checkpoint of the same step, so
  rows past the checkpoint are exactly those the resumed run will write again.
"""
import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

import data as datalib
import learners
from model import ModelArgs, Transformer
from plumbing.config import check
from plumbing.errors import UserError


def prev_path(path):
    return Path(path).with_name(Path(path).stem + ".prev" + Path(path).suffix)  # ckpt.pt -> ckpt.prev.pt


def save(path, obj):
    datalib.write_atomic(path, lambda f: torch.save(obj, f), keep_old=prev_path(path))


def read(path):
    """The checkpoint at path, or a UserError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, or a file that wants to run code
        raise UserError(f"{path} cannot be read safely ({e.__class__.__name__}): it is truncated, corrupt, "
                              "or was not written by this version of train.py") from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise UserError(f"{path} is not a train.py checkpoint")
    return ckpt


def load(path, fallback=True):
    """read(path); if that fails and fallback, the previous checkpoint, saying so."""
    try:
        return read(path)
    except UserError as e:
        prev = prev_path(path)
        if not (fallback and prev.exists()):
            hint = f"; try {prev}" if prev.exists() else ""
            raise UserError(f"{e}{hint}") from None
        ckpt = read(prev)
        print(f"warning: {e}; resuming from {prev} (step {ckpt['step']}) instead", file=sys.stderr)
        return ckpt


def cut_log(path, step):
    """Keep the rows of a jsonl log at or before step. A torn line (a kill mid-write) is dropped
    with a warning that names the file and line."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            print(f"warning: {path} line {i} is torn (the run was killed while writing it); dropped", file=sys.stderr)
            continue
        if row.get("step", 0) <= step:
            keep.append(line + "\n")
    datalib.write_atomic(path, lambda f: f.write("".join(keep).encode()))


def rng_state():
    """Every global RNG, as tensors and plain values (weights_only loads them)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {"torch": torch.get_rng_state(), "python": random.getstate(),
         "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                   "gauss": float(gauss)}}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def build_model(ckpt, device="cpu"):
    """The decoder a checkpoint holds: its shape from model_args, the changes its run's variants
    made (learners/: TARP's matrices, TAMS's ops), its weights loaded."""
    fields = {f.name for f in dataclasses.fields(ModelArgs)}  # older checkpoints also kept variant flags here
    model = Transformer(ModelArgs(**{k: v for k, v in ckpt["model_args"].items() if k in fields}))
    learners.make(argparse.Namespace(**ckpt["config"])).change_model(model)
    model.load_state_dict(ckpt["model"])
    return model.to(device)


# ----------------------------------------------------------------------------- resume

# Flags a resumed run cannot change: the model's shape, the data streams, and what the episode
# head and the learned step sizes are. All others given again take effect.
FIXED_ON_RESUME = ("size", "block_size", "seed", "task", "inner_params", "learn_inner_lr", "tarp", "tams")


def resume_config(a, out, cut_logs=True):
    """The checkpoint to resume from, and the run's flags: the saved run's, then those given
    again now (a new namespace). The logs are cut back to the checkpoint's step (by rank 0 only)."""
    try:
        ckpt = load(out / "ckpt.pt")
    except UserError as e:
        raise UserError(f"--resume: {e}" + ("; train without --resume first" if "not found" in str(e) else "")) from None
    saved = ckpt["config"]
    for k in FIXED_ON_RESUME:
        if k in a.given and getattr(a, k) != saved.get(k):
            raise UserError(f"--{k.replace('_', '-')} {getattr(a, k)}: {out / 'ckpt.pt'} was trained with "
                            f"{saved.get(k)}, which a resumed run cannot change; start a fresh --out-dir")
    a = check(argparse.Namespace(**{**vars(a), **saved, **{k: getattr(a, k) for k in a.given}, "resume": True}))
    for name in ("log.jsonl", "dynamics.jsonl") if cut_logs else ():  # rows past the checkpoint will be written again
        cut_log(out / name, ckpt["step"])
    print(f"resuming from step {ckpt['step']}")
    return ckpt, a


def load_state(ckpt, model, head, inner, opt, meta_opt, a, out):
    """The trained weights, episode head, learned step sizes and optimiser state of a checkpoint.
    A separate meta optimiser (--meta-moments separate) starts fresh where the checkpoint has
    none, e.g. one saved before --meta-start or by a run with shared moments."""
    model.load_state_dict(ckpt["model"])
    try:
        head.load_state_dict(ckpt["meta_head"])
        inner.load_state_dict(ckpt.get("inner_lrs", {}))
        opt.load_state_dict(ckpt["optimizer"])
        if meta_opt and ckpt.get("meta_optimizer"):
            meta_opt.load_state_dict(ckpt["meta_optimizer"])
        for o in filter(None, (opt, meta_opt)):
            o.param_groups[0]["weight_decay"] = a.weight_decay  # a --weight-decay given again takes effect
    except (KeyError, ValueError, RuntimeError):
        saved = ckpt["config"]
        raise UserError(f"--resume: {out / 'ckpt.pt'} has another episode head or other learned step sizes (saved "
                        f"--task {saved.get('task')}, --inner-params {saved.get('inner_params')}, --learn-inner-lr "
                        f"{saved.get('learn_inner_lr', False)}); resume with those or start a fresh --out-dir") from None


def saved_config(a):
    """The config as a checkpoint and run.json keep it: every flag's value, not which were given."""
    return {k: v for k, v in vars(a).items() if k != "given"}
