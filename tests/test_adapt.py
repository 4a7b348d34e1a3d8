"""tools/adapt.py, the adaptation probe: where its curve starts, that it falls, that it repeats."""
import json

import numpy as np
import pytest
import torch

import data
from conftest import run_train, sentences
from plumbing import checkpoint
from tools import adapt

FLAGS = ["--budgets", "300,1200", "--dev-tokens", "400", "--heldout-tokens", "600", "--steps", "8",
         "--batch-size", "4", "--lrs", "1e-3,3e-3", "--device", "cpu"]


@pytest.fixture(scope="module")
def ckpt(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt_ckpt")
    run_train(data_dir, out, "--max-steps", 0)  # the untrained model: every text is new to it
    return out / "ckpt.pt"


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    p = tmp_path_factory.mktemp("adapt_text") / "text.txt"
    p.write_text(" ".join(sentences(400, seed=7)))  # the corpus's grammar: learnable in a few steps
    return p


def probe(ckpt, text, out, *extra):
    adapt.main(["--ckpt", str(ckpt), "--text", str(text), "--out", str(out), *FLAGS, *map(str, extra)])
    return json.loads(out.read_text())


CHEAP = ["--budgets", "300", "--lrs", "3e-3", "--steps", "2"]  # later flags win


def test_the_curve_starts_at_the_checkpoints_own_held_out_loss_and_falls(ckpt, text, tmp_path):
    r = probe(ckpt, text, tmp_path / "a.json", "--target", 4.5)
    assert list(r["budgets"]) == ["300", "1200"]
    ck = checkpoint.load(ckpt)
    tok = data.Tokenizer(ck["data_meta"], ck["config"]["data_dir"], ck.get("vocab_map"))
    ids = data.held_out_text(text, tok)[0][1200 + 400 : 1200 + 400 + 600 + 1]  # the held-out part, by hand
    x = torch.from_numpy(np.stack([ids[s : s + 33] for s in range(0, 600, 32) if s + 33 <= len(ids)]))
    model = checkpoint.build_model(ck)
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()
    for b in r["budgets"].values():
        steps = [c["step"] for c in b["curve"]]
        assert steps == [0, 1, 2, 4, 8] and b["curve"][0]["loss"] == pytest.approx(want, rel=1e-5)
        assert b["curve"][-1]["loss"] < b["curve"][0]["loss"] - 0.5  # fine-tuning learns the text
        assert f"{b['lr']:g}" == min(b["dev_loss"], key=b["dev_loss"].get)  # the lr of the lowest dev loss
        assert b["curve"][-1]["tokens"] == 8 * 4 * 32 and b["curve"][-1]["flops"] == 8 * r["flops_per_step"]
        assert b["curve"][-1]["loss"] <= b["area"] <= b["curve"][0]["loss"]
        first = next((c for c in b["curve"] if c["loss"] <= 4.5), None)  # --target 4.5
        assert b["to_target"] == (first and {k: first[k] for k in ("step", "tokens", "flops")})
    assert r["budgets"]["1200"]["to_target"] is not None
    alone = probe(ckpt, text, tmp_path / "b.json", "--lrs", r["budgets"]["1200"]["lr"])  # only the lr it chose
    assert alone["budgets"]["1200"]["curve"] == r["budgets"]["1200"]["curve"]  # the other lrs tried change nothing


def test_the_same_flags_give_the_same_curve(ckpt, text, tmp_path):
    a, b = probe(ckpt, text, tmp_path / "a.json", *CHEAP), probe(ckpt, text, tmp_path / "b.json", *CHEAP)
    assert a["budgets"] == b["budgets"]
    c = probe(ckpt, text, tmp_path / "c.json", *CHEAP, "--seed", 1)  # other batches: another curve
    assert c["budgets"]["300"]["curve"][-1]["loss"] != a["budgets"]["300"]["curve"][-1]["loss"]


def test_bad_inputs_are_one_line(ckpt, text, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Alice painted the apple. " * 20)
    with pytest.raises(SystemExit, match=r"^adapt.py: error: --text .*short.txt has [\d,]+ tokens; the largest budget, "
                                         r"--dev-tokens and --heldout-tokens need 2,201: lower them"):
        probe(ckpt, short, tmp_path / "x.json")
    with pytest.raises(SystemExit, match=r"^adapt.py: error: --text .*none.txt: no such file$"):
        probe(ckpt, tmp_path / "none.txt", tmp_path / "x.json")
    with pytest.raises(SystemExit, match=r"^adapt.py: error: .*missing.pt not found$"):
        probe(tmp_path / "missing.pt", text, tmp_path / "x.json")
    with pytest.raises(SystemExit, match=r"^adapt.py: error: --block-size 99: the checkpoint's model covers 1 to 32"):
        probe(ckpt, text, tmp_path / "x.json", "--block-size", 99)
    odd = tmp_path / "odd.txt"  # words the 256-id vocabulary has never seen: many <unk>
    odd.write_text(" ".join(sentences(400, seed=3)).replace("the ", "zyxquv "))
    r = probe(ckpt, odd, tmp_path / "odd.json", *CHEAP, "--max-unk", 0.01)
    assert r["unk_frac"] > 0.01 and "maps" in capsys.readouterr().err
