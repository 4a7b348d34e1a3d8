"""plumbing/uner.py and eval_ner.py: conlleval scoring, the UNER reader, sub-token alignment and an end-to-end probe."""
import json
import random

import numpy as np
import pytest
import torch
from conftest import NAMES, PLACES, THINGS, VERBS, run_train

import data
import eval_ner as ner
from plumbing import uner
from plumbing.errors import UserError
from plumbing.uner import score, spans


def f1(gold, pred):
    return score([gold], [pred])["f1"]


def test_spans_follow_conlleval():
    assert spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert spans(["I-ORG", "I-ORG", "O"]) == {("ORG", 0, 2)}  # an I- that starts a span starts an entity
    assert spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # a type change starts a new one
    assert spans(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}
    assert spans(["O", "O"]) == set() and spans([]) == set()


def test_scorer_hand_cases():
    gold = ["B-PER", "I-PER", "O", "B-LOC"]
    assert f1(gold, gold) == 1.0  # exact match
    r = score([gold], [["B-ORG", "I-ORG", "O", "B-LOC"]])  # wrong type on one of two
    assert (r["precision"], r["recall"]) == (0.5, 0.5)
    assert r["per_type"]["PER"]["recall"] == 0.0 and r["per_type"]["ORG"]["precision"] == 0.0
    assert r["per_type"]["LOC"]["f1"] == 1.0
    r = score([gold], [["B-PER", "O", "O", "B-LOC"]])  # wrong right boundary
    assert (r["n_gold"], r["n_pred"], r["precision"]) == (2, 2, 0.5)
    assert f1(gold, ["I-PER", "I-PER", "O", "I-LOC"]) == 1.0  # I- starts count as starts
    r = score([["O", "O"]], [["O", "O"]])  # empty: nothing to find, nothing found
    assert (r["precision"], r["recall"], r["f1"], r["n_gold"]) == (0.0, 0.0, 0.0, 0)
    r = score([gold, ["B-LOC"]], [gold, ["O"]])  # micro average over sentences
    assert r["n_gold"] == 3 and r["recall"] == pytest.approx(2 / 3) and r["precision"] == 1.0


def test_reader_handles_comments_oth_and_three_columns(tmp_path):
    p = tmp_path / "x.iob2"
    p.write_text("# sent_id = 1\n# text = Anna bor i Oslo\n1\tAnna\tB-PER\t-\tann\n2\tbor\tO\n3\ti\tB-O\n"
                 "4\tOslo\tB-LOC\n\n1\tGoogle\tB-OTH\n2\tSearch\tI-OTH\n")
    assert uner.read_iob2(p) == [(["Anna", "bor", "i", "Oslo"], ["B-PER", "O", "O", "B-LOC"]),
                                (["Google", "Search"], ["O", "O"])]


@pytest.mark.parametrize("line,err", [("1\tAnna\n", r"x.iob2:2: expected tab-separated"),
                                      ("1\tAnna\tB-MISC\n", r"x.iob2:2: unknown tag 'B-MISC'")])
def test_reader_names_file_and_line_of_a_malformed_line(tmp_path, line, err):
    p = tmp_path / "x.iob2"
    p.write_text("1\tHej\tO\n" + line)
    with pytest.raises(UserError, match=err):
        uner.read_iob2(p)


def test_align_gives_each_kept_word_its_token_span_and_label():
    meta = {"eot_id": 100257, "mask_id": 100277, "unk_id": None, "vocab_map": None}
    tok = data.Tokenizer(meta)
    words, tags = ["Kjeld", "Christensen", "visited", "Copenhagen"], ["B-PER", "I-PER", "O", "B-LOC"]
    ids, spans_, labels = uner.align(words, tags, tok, max_len=128)
    pieces = [len(tok.encode(w if i == 0 else " " + w)) for i, w in enumerate(words)]
    assert max(pieces) > 1 and len(ids) == sum(pieces)
    starts = [sum(pieces[:i]) for i in range(4)]
    assert spans_ == [(s, s + p) for s, p in zip(starts, pieces)] and labels == [1, 2, 0, 5]
    ids, spans_, labels = uner.align(words, tags, tok, max_len=pieces[0] + 1)  # truncation: a cut word keeps its start
    assert len(ids) == pieces[0] + 1 and spans_ == [(0, pieces[0]), (pieces[0], pieces[0] + 1)] and labels == [1, 2]


class PositionModel(torch.nn.Module):
    """A stand-in decoder whose hidden state at position t is (t, 10 * row)."""
    args = None

    def forward(self, ids, hidden=True):
        B, T = ids.shape
        return torch.stack([torch.arange(T).float().expand(B, T), 10 * torch.arange(B).float()[:, None].expand(B, T)], -1)


@pytest.mark.parametrize("feature,expect", [("first", [0, 1, 4, 0]), ("last", [0, 3, 5, 2]), ("mean", [0, 2, 4.5, 1])])
def test_word_feature_reads_the_first_the_last_or_the_mean_sub_token(feature, expect):
    chunk = [{"spans": [(0, 1), (1, 4), (4, 6)]}, {"spans": [(0, 3)]}]  # words of 1, 3, 2 tokens; then one of 3
    f = ner.word_states(PositionModel(), torch.zeros(2, 6, dtype=torch.long), chunk, feature)
    assert f[:, 0].tolist() == expect and f[:, 1].tolist() == [0, 0, 0, 10]  # the right sentence too


def write_uner(root, seed):
    """A toy UNER set from our own sentences: names are PER, cities LOC."""
    rng = random.Random(seed)
    for split, n in (("train", 200), ("dev", 40), ("test", 40)):
        lines = []
        for s in range(n):
            words = [(rng.choice(NAMES), "B-PER"), (rng.choice(VERBS), "O"), ("the", "O"), (rng.choice(THINGS), "O"),
                     ("in", "O"), (rng.choice(PLACES), "B-LOC"), (".", "O")]
            if s % 3 == 0:
                words = words[3:5] + words[:3] + words[5:]
            lines += [f"# sent_id = {split}-{s}"] + [f"{i + 1}\t{w}\t{t}" for i, (w, t) in enumerate(words)] + [""]
        (root / "toy").mkdir(parents=True, exist_ok=True)
        (root / "toy" / f"{split}.iob2").write_text("\n".join(lines) + "\n")
    for code in ("testonly", "tl_trg"):  # test-only sets; tl_trg is reported apart as well
        (root / code).mkdir(exist_ok=True)
        (root / code / "test.iob2").write_text((root / "toy" / "test.iob2").read_text())


@pytest.fixture(scope="module")
def ckpt(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner_ckpt")
    # an untrained backbone: its features still tell tokens apart, which is all a probe test needs
    # (after a few steps a tiny model's top layer collapses towards the unigram direction)
    run_train(data_dir, out, "--max-steps", 0, "--dynamics-every", 0)
    return out / "ckpt.pt"


def test_head_probe_learns_the_toy_set_and_writes_its_outputs(ckpt, tmp_path):
    write_uner(tmp_path / "uner", 0)
    base = ["--ckpt", str(ckpt), "--uner-dir", str(tmp_path / "uner"), "--train", "toy", "--device", "cpu"]
    untrained = ner.run(ner.parse(base + ["--epochs", "1", "--head-lr", "1e-12"]))[0]["toy"]["f1"]  # a random head
    ner.main(base + ["--epochs", "5", "--head-lr", "1e-4,1e-2", "--out", str(tmp_path / "r.json"), "--pred-dir", str(tmp_path / "pred")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert set(r) == {"ckpt", "mode", "train", "word_feature", "head_lr", "head_lr_dev_f1", "results", "avg_f1", "apart",
                      "avg_f1_rest"}
    assert r["apart"] == {"tl_trg": r["results"]["tl_trg"]["f1"]}  # the Tagalog set apart, as the follow-up paper
    assert r["avg_f1_rest"] == pytest.approx(np.mean([v["f1"] for c, v in r["results"].items() if c != "tl_trg"]))
    assert r["train"] == ["toy"] and r["word_feature"] == "first"
    assert r["head_lr"] == 1e-2 and r["head_lr_dev_f1"]["0.01"] > r["head_lr_dev_f1"]["0.0001"]  # chosen on dev
    assert set(r["results"]) == {"toy", "testonly", "tl_trg"}  # test-only sets are evaluated too
    toy = r["results"]["toy"]
    assert {"precision", "recall", "f1", "n_gold", "n_pred", "per_type"} <= set(toy) and toy["n_gold"] == 80
    assert toy["f1"] > 0.8 and toy["f1"] > untrained + 0.5
    rows = (tmp_path / "pred" / "toy.conll").read_text().split("\n\n")
    first = rows[0].splitlines()
    assert len(first) == 7 and all(len(line.split()) == 3 for line in first)
    assert score([[l.split()[1] for l in first]], [[l.split()[2] for l in first]])["n_gold"] == 2


def test_full_mode_fine_tunes_the_backbone(ckpt, tmp_path):
    import torch
    write_uner(tmp_path / "uner", 1)
    a = ner.parse(["--ckpt", str(ckpt), "--uner-dir", str(tmp_path / "uner"), "--train", "toy", "--device", "cpu",
                   "--mode", "full", "--epochs", "1", "--lr", "1e-3"])
    before = torch.load(ckpt, weights_only=False)["model"]
    model, tok = ner.load_checkpoint(a.ckpt[0], "cpu")
    items = uner.encode_set(uner.read_iob2(tmp_path / "uner" / "toy" / "train.iob2"), tok, 128)
    ner.probe(model, items, [], a, tok.eot, "cpu", 1e-3)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_user_errors_are_one_line(ckpt, tmp_path):
    write_uner(tmp_path / "uner", 2)
    cases = [(["--ckpt", str(tmp_path / "none.pt"), "--uner-dir", str(tmp_path / "uner"), "--train", "toy"], "--ckpt .*not found"),
             (["--ckpt", str(ckpt), "--uner-dir", str(tmp_path / "uner"), "--train", "xx_yy"], "--train xx_yy: no train file"),
             (["--ckpt", str(ckpt), "--uner-dir", str(tmp_path / "nope"), "--train", "toy"], "--uner-dir .*no such directory"),
             (["--ckpt", str(ckpt), "--train", "toy"], "--uner-dir DIR .* or --download")]
    for argv, err in cases:
        with pytest.raises(SystemExit, match=err):
            ner.main(argv + ["--device", "cpu"])


def test_several_checkpoints_of_a_trajectory_give_one_result_each(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "run", "--max-steps", 4, "--eval-every", 4, "--save-every", 2, "--dynamics-every", 0)
    saved = sorted(p.name for p in (tmp_path / "run").glob("ckpt_step*.pt"))
    assert saved == ["ckpt_step0.pt", "ckpt_step2.pt", "ckpt_step4.pt"]  # the init too: a probe's baseline
    assert torch.load(tmp_path / "run" / "ckpt_step2.pt", weights_only=True)["step"] == 2
    saved = saved[1:]
    write_uner(tmp_path / "uner", 3)
    ner.main(["--ckpt", *(str(tmp_path / "run" / n) for n in saved), "--uner-dir", str(tmp_path / "uner"),
              "--train", "toy", "--device", "cpu", "--epochs", "1", "--head-lr", "1e-2", "--word-feature", "last",
              "--out", str(tmp_path / "r.json")])
    for n in saved:
        r = json.loads((tmp_path / f"r_run_{n[:-3]}.json").read_text())
        assert r["ckpt"].endswith(n) and r["word_feature"] == "last"
