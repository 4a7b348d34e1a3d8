"""
Checkpoints you can trust, and logs that agree with them after a kill.

- A checkpoint is one plain dict of tensors and plain Python values (RNG states and the
  vocabulary map included), so torch.load(path, weights_only=True) reads it: loading a file
  someone sent you runs no code from it.
- It is written atomically (a temp file, then a rename), and the previous one is kept as
  ckpt.prev.pt. A kill at any moment leaves at least one complete checkpoint: the old one, the
  new one, or (killed between the two renames) the old one under its .prev name.
- On --resume, log.jsonl and dynamics.jsonl are cut back to the rows at or before the
  checkpoint's step. The run writes each log row *before* the checkpoint of the same step, so
  rows past the checkpoint are exactly those the resumed run will write again.
"""
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

import data as datalib


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def prev_path(path):
    return Path(path).with_name(Path(path).stem + ".prev" + Path(path).suffix)  # ckpt.pt -> ckpt.prev.pt


def save(path, obj):
    datalib.write_atomic(path, lambda f: torch.save(obj, f), keep_old=prev_path(path))


def read(path):
    """The checkpoint at path, or a CheckpointError naming it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, or a file that wants to run code
        raise CheckpointError(f"{path} cannot be read safely ({e.__class__.__name__}): it is truncated, corrupt, "
                              "or was not written by this version of train.py") from None
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise CheckpointError(f"{path} is not a train.py checkpoint")
    return ckpt


def load(path, fallback=True):
    """read(path); if that fails and fallback, the previous checkpoint, saying so."""
    try:
        return read(path)
    except CheckpointError as e:
        prev = prev_path(path)
        if not (fallback and prev.exists()):
            hint = f"; try {prev}" if prev.exists() else ""
            raise CheckpointError(f"{e}{hint}") from None
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
