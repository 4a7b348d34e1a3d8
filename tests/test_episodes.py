"""tasks/: the SMLMT index, the pico builder, the index cache, and the inspector (tools/inspect_episodes.py)."""
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

import data
import tasks
from plumbing import config
from plumbing.word_index import occurrence_index
from tools import inspect_episodes


def make(data_dir, *extra):
    a = config.get_args(["--data-dir", str(data_dir), *TINY, *map(str, extra)])
    dmeta = data.load_meta(data_dir)
    tok = {s: np.memmap(Path(data_dir) / f"{s}.bin", dtype=dmeta["dtype"], mode="r") for s in ("train", "val")}
    return a, tasks.make(a, Path(data_dir), dmeta, tok["train"], tok["val"]), dmeta


@pytest.fixture(scope="module")
def full_vocab_dir(tmp_path_factory, corpus_txt):
    """Full cl100k ids: the frequency order of word types differs from their id order."""
    out = tmp_path_factory.mktemp("full")
    data.prepare([str(corpus_txt)], out, vocab_size=None, val_fraction=0.1)
    return out


def test_occurrence_index_follows_the_order_of_types_not_of_ids():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=5000)
    types = np.array([41, 7, 30, 2, 49, 13])  # deliberately not sorted by id
    offsets, pos = occurrence_index(tokens, types)
    for j, t in enumerate(types):
        found = pos[offsets[j] : offsets[j + 1]]
        assert (tokens[found] == t).all() and len(found) == (tokens == t).sum()


def test_full_vocabulary_windows_hold_their_masked_word(full_vocab_dir):
    a, eps, dmeta = make(full_vocab_dir)
    types = eps.index["train"][0]
    assert (np.diff(types) < 0).any()  # the fixture really has frequency order != id order
    good = n = 0
    for i in range(20):
        g, m = eps.verify(eps.episode("train", np.random.default_rng(i)))
        good, n = good + g, n + m
    assert good == n > 0


def test_inspector_prints_episodes_and_the_check(full_vocab_dir, capsys):
    inspect_episodes.main(["--data-dir", str(full_vocab_dir), "--n-way", "4", "--k-shot", "2", "--n-query", "2",
               "--episode-len", "16", "--skip-top-words", "5", "--min-word-count", "5", "--episodes", "30"])
    out = capsys.readouterr().out
    assert out.count("== training episode") == 2 and "<mask>" in out and "class 0:" in out
    last = out.strip().splitlines()[-1]
    x, y = last.removeprefix("masked word present in ").removesuffix(" over 30 episodes").split("/")
    assert x == y == str(30 * 4 * 4)


def test_index_cache_is_keyed_by_the_data_and_written_atomically(corpus_txt, tmp_path):
    d = tmp_path / "d"
    data.prepare([str(corpus_txt)], d, vocab_size=256, val_fraction=0.1)
    make(d)
    data.prepare([str(corpus_txt)], d, vocab_size=64, val_fraction=0.1)  # re-prepared in place: other ids
    a, eps, dmeta = make(d, "--n-way", 2)
    assert len(list(d.glob("smlmt_train_*.npz"))) == 2 and not list(d.glob("*.tmp"))
    assert (eps.index["train"][0] < 64).all()  # not the stale index of the 256-id vocabulary
    for i in range(10):
        g, m = eps.verify(eps.episode("train", np.random.default_rng(i)))
        assert g == m


def test_pico_episode_follows_the_released_trainer(data_dir):
    a, eps, dmeta = make(data_dir, "--task", "pico")
    ep = eps.episode("train", np.random.default_rng(0))
    B, T, K, N = a.batch_size, a.block_size, a.k_shot, a.n_way
    assert ep["xs"].shape == ep["xq"].shape == (B, T) and ep["ys"].shape == (B * K,) and ep["yq"].shape == (B,)
    assert len(set(ep["ps"])) == K and ep["pq"][0] not in ep["ps"]  # shared positions, query apart
    mask = dmeta["mask_id"]
    assert (ep["xs"][:, ep["ps"]] == mask).all() and (ep["xq"][:, ep["pq"]] == mask).all()
    assert (ep["xs"] == mask).sum() == B * K and (ep["xq"] == mask).sum() == B  # nothing else masked
    assert len(np.unique(ep["classes"])) == N
    for y, t in zip(ep["ys"], ep["targets_s"]):  # in the class set: its own class; outside: clamped to 0
        assert ep["classes"][y] == t or (y == 0 and t not in ep["classes"])
    dropped = make(data_dir, "--task", "pico", "--pico-drop-outside")[1].episode("train", np.random.default_rng(0))
    outside = ~np.isin(dropped["targets_q"], dropped["classes"])
    assert (dropped["yq"][outside] == -100).all() and (dropped["yq"][~outside] >= 0).all()


def test_pico_pads_the_classes_with_unreserved_ids(data_dir):
    a, eps, dmeta = make(data_dir, "--task", "pico", "--n-way", 40)  # more classes than support ids
    ep = eps.episode("train", np.random.default_rng(3))
    assert len(np.unique(ep["classes"])) == 40
    assert not np.isin(ep["classes"], [dmeta["eot_id"], dmeta["mask_id"], dmeta["unk_id"]]).any()
