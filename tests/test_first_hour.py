"""The first hour: the main command fits the machine, runs offline, and every mistake is one line."""
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, run_train, write_corpus

import data
import eval_ner
import train
from plumbing import config, sources
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--eval-batches", "1", "--sample-tokens", "0", "--dynamics-every", "0"]


def test_a_cpu_without_shape_flags_gets_the_cpu_recipe_and_typed_flags_win():
    a = config.get_args([])  # the test machine has no GPU
    assert (a.recipe, a.batch_size, a.block_size, a.max_steps, a.lr, a.eval_every) == ("cpu", 16, 128, 300, 2e-3, 50)
    assert a.data_dir == "data/tinyshakespeare8k" and a.n_way == 4 and a.meta_start == 150
    b = config.get_args(["--lr", "1e-3"])  # not a shape flag: still the recipe, with the lr typed
    assert (b.recipe, b.lr, b.batch_size) == ("cpu", 1e-3, 16)
    for flags in (["--recipe", "paper"], ["--batch-size", "32"], ["--device", "cuda"]):
        c = config.get_args(flags)
        assert (c.recipe, c.block_size, c.max_steps, c.lr, c.data_dir) == ("paper", 512, 20000, 3e-4, "data/tinystories")


@pytest.mark.parametrize("flag", ["--batch-size", "--eval-every", "--block-size", "--grad-accum", "--eval-batches",
                                  "--log-every", "--k-shot", "--n-way", "--n-query", "--episode-len"])
def test_count_flags_below_one_are_refused(flag):
    for value in ("0", "-1"):
        with pytest.raises(UserError, match=f"^{flag} {value}: must be at least 1$"):
            config.get_args([flag, value])
    with pytest.raises(UserError, match="--max-steps -1: must be at least 0"):  # 0 = evaluate the start only
        config.get_args(["--max-steps", "-1"])


def test_bad_input_on_the_command_line_is_one_line_without_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--batch-size", "0"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "--batch-size 0: must be at least 1" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    with pytest.raises(SystemExit, match="^eval_ner.py: error: --device cuda: no CUDA device is visible; use --device cpu$"):
        eval_ner.main(["--ckpt", "x.pt", "--train", "da_ddt", "--uner-dir", ".", "--device", "cuda"])


def test_a_data_dir_that_is_a_text_file_gets_the_command_that_prepares_it(tmp_path):
    (tmp_path / "some.txt").write_text("a text that was never prepared\n")
    with pytest.raises(SystemExit, match=r"^train.py: error: --data-dir .*some.txt is a file; prepare it first: python "
                                         r"data.py --source .*some.txt --out-dir data/some, then train with --data-dir"):
        train.main(["--data-dir", tmp_path / "some.txt", "--out-dir", tmp_path / "o"])


def test_a_txt_file_of_blank_line_paragraphs_is_read_as_documents(tmp_path, capsys):
    paragraphs = [" ".join(f"Paragraph {i} sentence {j}." for j in range(5)) for i in range(200)]
    (tmp_path / "book.txt").write_text("\n\n".join(paragraphs) + "\n")
    meta = data.prepare([str(tmp_path / "book.txt")], tmp_path / "out", val_fraction=0.01)
    assert (meta["train_docs"], meta["val_docs"]) == (198, 2)
    assert "no <|endoftext|> line, so blank lines separate its documents" in capsys.readouterr().out
    (tmp_path / "one.txt").write_text("one line\nand another, no blank line between\n")
    with pytest.raises(UserError, match="one document, so nothing is left to validate on; separate documents with blank"):
        data.prepare([str(tmp_path / "one.txt")], tmp_path / "out1")


def test_a_vanilla_run_without_episodes_needs_no_episode_index(data_dir, tmp_path):
    rare = ["--min-word-count", 100000]  # no word type qualifies: no SMLMT episode can be built
    with pytest.raises(SystemExit, match="lower --n-way .*--k-shot.*--eval-episodes 0"):
        run_train(data_dir, tmp_path / "a", "--max-steps", 2, *rare, *QUIET)
    rows = run_train(data_dir, tmp_path / "b", "--max-steps", 2, "--eval-every", 2, "--eval-episodes", 0, *rare, *QUIET)
    assert rows[-1]["step"] == 2 and "episode_acc_before" not in rows[-1]


def test_bf16_on_a_cpu_without_bf16_units_is_warned(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)
    run_train(data_dir, tmp_path, "--max-steps", 0, "--dtype", "bfloat16", *QUIET)
    assert "warning: --dtype bfloat16 on a CPU without bf16 matrix units" in capsys.readouterr().err


def test_the_default_corpus_is_the_embedded_one_and_needs_no_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train.main(["--recipe", "cpu", "--max-steps", 2, "--eval-every", 2, "--eval-episodes", 0, *QUIET])
    out = capsys.readouterr().out
    assert "corpus: the embedded TinyShakespeare" in out and "recipe cpu" in out
    assert (tmp_path / "data" / "tinyshakespeare8k" / "meta.json").exists() and (tmp_path / "out" / "ckpt.pt").exists()

    def offline(url, *a, **k):
        raise UserError(f"cannot download {url} (URLError); offline?")
    monkeypatch.setattr(sources, "download", offline)  # the paper's recipe falls back to it too, full vocabulary
    train.main(["--batch-size", 2, "--block-size", 16, "--max-steps", 1, "--eval-every", 1, "--eval-episodes", 0,
                "--out-dir", "out2", *QUIET])
    out = capsys.readouterr().out
    assert "TinyStories cannot be had (cannot download" in out and "corpus: the embedded TinyShakespeare" in out
    assert data.load_meta(tmp_path / "data" / "tinyshakespeare")["vocab_size"] > 100_000
    with pytest.raises(SystemExit, match=r"^train.py: error: no --data-dir, TinyStories cannot be had, and the embedded "
                                         r"corpus's .* train tokens would be repeated 1,\d{3} times by --max-steps 20000 x 32 "
                                         r"x 512 tokens; prepare a corpus .* or .* --recipe cpu$"):
        train.main(["--recipe", "paper", "--out-dir", "out3", *QUIET])  # the paper's shapes, offline (a GPU's default)


def test_ctrl_c_is_one_line_exit_130_and_resume_continues(tmp_path):
    d = tmp_path / "d"
    write_corpus(tmp_path / "c.txt", n_docs=120)
    data.prepare([str(tmp_path / "c.txt")], d, vocab_size=256, val_fraction=0.1)
    args = ["--data-dir", str(d), "--out-dir", str(tmp_path / "o"), *TINY, "--max-steps", "100000", "--eval-every", "5",
            "--log-every", "1", *QUIET]
    log = tmp_path / "run.log"  # stdout redirected to a file, as a user's nohup run has it
    # SIGINT at its default in the child: a suite started in the background (`cmd &` from a script)
    # hands its children SIGINT ignored, and the Ctrl-C below would then leave a 100,000-step run going
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], stdout=f, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_sigint)
        try:
            t0 = time.time()
            while "step      7" not in log.read_text():  # a checkpoint exists and training goes on
                assert p.poll() is None and time.time() - t0 < 120
                time.sleep(0.05)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:  # whatever failed above, no training process outlives the test
                p.kill()
                p.wait()
    text = log.read_text()  # no progress-bar frames in a redirected log: one line per step, no carriage returns
    assert "\r" not in text and text.count("step      4") == 1 and "eval step 5" in text
    assert p.returncode == 130 and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert re.search(r"^train.py: interrupted at step \d+ of 100000; .*ckpt.pt holds step (5|10); continue with", err)
    assert err.strip().endswith("--resume") and "continue with: python train.py --data-dir" in err
    rows = run_train(d, tmp_path / "o", "--resume", "--max-steps", 12, "--eval-every", 5, *QUIET)
    assert rows[-1]["step"] == 12 and [r["step"] for r in rows] == [0, 5, 10, 12]


@pytest.mark.parametrize("argv,line", [(["--lr", "-1"], "--lr -1: must be > 0"),
                                       (["--weight-decay", "-1"], "--weight-decay -1: must be at least 0"),
                                       (["--inner-lr", "-1"], "--inner-lr -1: must be at least 0")])
def test_negative_rates_are_refused_in_one_line(argv, line):
    # a negative inner lr would climb the support loss without a word; torch's own lr check is a traceback
    with pytest.raises(SystemExit, match=f"^train.py: error: {re.escape(line)}$"):
        train.main(argv)


def test_eval_ner_with_no_epoch_is_refused_rather_than_scoring_an_untrained_head():
    with pytest.raises(SystemExit, match="^eval_ner.py: error: --epochs 0: must be at least 1$"):
        eval_ner.main(["--ckpt", "x.pt", "--train", "da_ddt", "--uner-dir", ".", "--epochs", "0"])


def test_a_source_that_is_not_utf8_names_the_file_and_byte(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("a caf\xe9 in the old town\n".encode("latin-1") * 50)
    with pytest.raises(SystemExit, match=r"^data.py: error: .*latin1.txt is not UTF-8 text at byte 5 \(b'\\xe9 in'\); "
                                         r"re-encode it first, e.g. for Latin-1: iconv -f latin1 -t utf-8"):
        data.main(["--source", str(src), "--out-dir", str(tmp_path / "d")])


@pytest.mark.parametrize("tool", sorted(p.stem for p in (ROOT / "tools").glob("*.py") if "__main__" in p.read_text()))
def test_every_tool_starts_from_its_new_home(tool, monkeypatch, capsys):
    """python -m tools.NAME -h, as the README runs them: the imports resolve after the move."""
    monkeypatch.setattr(sys, "argv", [f"tools/{tool}.py", "-h"])
    monkeypatch.delitem(sys.modules, f"tools.{tool}", raising=False)  # run it afresh, as its own __main__
    with pytest.raises(SystemExit) as e:
        runpy.run_module(f"tools.{tool}", run_name="__main__")
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
