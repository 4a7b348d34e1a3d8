"""Shared fixtures: a small corpus of our own sentences, prepared once per session."""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402

NAMES = ["Alice", "Bob", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Irene", "Jonas"]
PLACES = ["Paris", "London", "Berlin", "Madrid", "Oslo", "Vienna", "Lisbon", "Prague", "Dublin", "Rome"]
THINGS = ["apple", "river", "garden", "letter", "window", "bridge", "market", "violin", "forest", "castle",
          "candle", "mirror", "harbor", "pencil", "rocket", "saddle", "tunnel", "wallet", "basket", "ladder"]
VERBS = ["found", "painted", "visited", "built", "opened", "watched", "carried", "cleaned", "sold", "drew"]


def sentences(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        yield (f"{rng.choice(NAMES)} {rng.choice(VERBS)} the {rng.choice(THINGS)} near the "
               f"{rng.choice(THINGS)} in {rng.choice(PLACES)}.")


def write_corpus(path, n_docs=120, per_doc=20, seed=0):
    """A .txt corpus: documents separated by <|endoftext|> lines."""
    it = sentences(n_docs * per_doc, seed)
    docs = [" ".join(next(it) for _ in range(per_doc)) for _ in range(n_docs)]
    path.write_text("\n<|endoftext|>\n".join(docs) + "\n")
    return docs


@pytest.fixture(scope="session")
def corpus_txt(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "stories.txt"
    write_corpus(p)
    return p


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus_txt):
    """Trimmed-vocabulary bins (the CPU configuration), prepared once."""
    out = tmp_path_factory.mktemp("data")
    data.prepare([str(corpus_txt)], out, vocab_size=256, val_fraction=0.1)
    return out


# the 11m shape on a tiny vocabulary and short sequences: fast enough for CPU tests. The
# dynamics instruments (SVDs of every matrix) cost 3/4 of such a run: tests/test_dynamics.py
# and the kill -9 test turn them on where they are what is tested
TINY = ["--dynamics-every", "0", "--size", "11m", "--device", "cpu", "--batch-size", "4", "--block-size", "32", "--lr", "3e-3",
        "--warmup-steps", "2", "--eval-batches", "2", "--log-every", "1000", "--eval-episodes", "2",
        "--n-way", "4", "--k-shot", "2", "--n-query", "2", "--episode-len", "16", "--inner-steps", "3",
        "--inner-lr", "0.1", "--skip-top-words", "5", "--min-word-count", "5", "--sample-tokens", "4"]


# the resume tests: 6 steps, cut at 3 and resumed. With --seed 4 the coin makes steps 1 and 4 meta
# steps, so both halves hold LM and meta steps, and the resumed half starts with meta state
CUT_AT_3 = ("--seed", "4")


def run_train(data_dir, out_dir, *extra):
    import train
    train.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), *TINY, *map(str, extra)])
    return [json.loads(line) for line in open(Path(out_dir) / "log.jsonl")]
