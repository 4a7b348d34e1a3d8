"""
SMLMT's word index (tasks/smlmt.py): the token types that look like words in a frequency band,
and where each occurs, as a CSR index cached beside the bins.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data as datalib


def word_types(tok, counts, skip_top, min_count):
    """Token ids in the frequency band that look like words (alphabetic after a leading space),
    most frequent first."""
    order = np.argsort(-counts, kind="stable")
    band = [i for i in order[skip_top:] if counts[i] >= min_count]
    return np.array([i for i in band if i not in (tok.eot, tok.mask, tok.unk)
                     and tok.decode([i]).removeprefix(" ").isalpha()], dtype=np.int64)


def occurrence_index(tokens, types):
    """CSR index: positions[offsets[j]:offsets[j+1]] are the positions of token types[j], for
    `types` in any order (word_types gives frequency order, not id order)."""
    rank = np.full(max(int(tokens.max()), int(types.max(initial=0))) + 1, -1, dtype=np.int64)
    rank[types] = np.arange(len(types))  # id -> its index in `types`
    r = rank[tokens]
    pos = np.flatnonzero(r >= 0)
    pos = pos[np.argsort(r[pos], kind="stable")]  # grouped in the order of `types`, ascending within
    offsets = np.concatenate([[0], np.cumsum(np.bincount(r[r >= 0], minlength=len(types)))])
    return offsets, pos


def cache_key(dmeta, a):
    """The SMLMT index depends on the exact tokens (fingerprint and split sizes) and the band."""
    what = [datalib.fingerprint(dmeta), dmeta.get("train_tokens"), dmeta.get("val_tokens"),
            dmeta.get("val_fraction"), dmeta.get("text_field"), a.skip_top_words, a.min_word_count]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


def smlmt_index(data_dir, dmeta, a, splits, tok, split):
    """(types, offsets, positions) of a split, cached beside the bins."""
    cache = Path(data_dir) / f"smlmt_{split}_{cache_key(dmeta, a)}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["types"], z["offsets"], z["pos"]
    counts = np.bincount(np.asarray(splits["train"]), minlength=dmeta["vocab_size"])
    types = word_types(tok, counts, a.skip_top_words, a.min_word_count)
    with tqdm(total=1, desc=f"SMLMT index ({split})", leave=False, disable=None) as bar:
        offsets, pos = occurrence_index(np.asarray(splits[split]), types)
        bar.update()
    datalib.write_atomic(cache, lambda f: np.savez(f, types=types, offsets=offsets, pos=pos))
    return types, offsets, pos

