"""Runs you can trust: safe checkpoints, exact recovery after kill -9, data and flag checks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, run_train

import data
import eval_ner
from plumbing import checkpoint, config
from plumbing.errors import UserError
from tools import compare, inspect_episodes

ROOT = Path(__file__).resolve().parents[1]
RUN = ("--max-steps", 12, "--eval-every", 4, "--dynamics-every", 8, "--meta", "--meta-start", 4)


def launch(data_dir, out, *extra):
    cmd = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(data_dir), "--out-dir", str(out), *TINY,
           *map(str, RUN), *map(str, extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(cond, proc, poll, timeout=120):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() - t0 < timeout
        time.sleep(poll)


def rows(path):
    return [json.loads(line) for line in open(path)]


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_run(data_dir, tmp_path, capsys):
    want = run_train(data_dir, tmp_path / "whole", *RUN)
    want_dyn = [r["step"] for r in rows(tmp_path / "whole" / "dynamics.jsonl")]
    out = tmp_path / "killed"
    p = launch(data_dir, out)  # 1: killed between evals
    try:
        wait_for(lambda: (out / "log.jsonl").exists() and len(rows(out / "log.jsonl")) >= 2, p, poll=0.02)
        time.sleep(0.3)
    finally:
        p.send_signal(signal.SIGKILL), p.wait()
    p = launch(data_dir, out, "--resume")  # 2: killed while a checkpoint is being written
    try:
        wait_for(lambda: (out / "ckpt.pt.tmp").exists(), p, poll=0.0005)  # a write lasts milliseconds
    finally:
        p.send_signal(signal.SIGKILL), p.wait()
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 99, "val_lo')  # 3: a torn last line, as a kill in mid-write leaves it
    got = run_train(data_dir, out, *RUN, "--resume")
    assert [r["step"] for r in got] == [r["step"] for r in want]  # exactly one row per eval
    assert [r["val_loss"] for r in got] == [r["val_loss"] for r in want]  # bit for bit
    assert got[-1]["meta_loss"] == want[-1]["meta_loss"] and got[-1]["episode_loss_after"] == want[-1]["episode_loss_after"]
    assert [r["step"] for r in rows(out / "dynamics.jsonl")] == want_dyn
    assert "log.jsonl line" in capsys.readouterr().err


def test_a_broken_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, capsys):
    want = run_train(data_dir, tmp_path / "whole", "--max-steps", 12, "--eval-every", 4, "--dynamics-every", 0)
    out = tmp_path / "cut"
    run_train(data_dir, out, "--max-steps", 8, "--decay-steps", 12, "--eval-every", 4, "--dynamics-every", 0)
    assert torch.load(out / "ckpt.prev.pt", weights_only=True)["step"] == 4
    ck = out / "ckpt.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])  # truncated, as by a full disk
    got = run_train(data_dir, out, "--resume", "--max-steps", 12)
    assert "resuming from" in capsys.readouterr().err
    assert [r["val_loss"] for r in got] == [r["val_loss"] for r in want]
    # killed between the two renames: no ckpt.pt, the complete new one still under .tmp
    os.replace(ck, out / "ckpt.pt.tmp")
    assert checkpoint.load(ck)["step"] == 8  # the .prev written by the last save


def test_checkpoints_load_with_weights_only_and_restore_every_rng(data_dir, tmp_path):
    run_train(data_dir, tmp_path, "--max-steps", 2, "--eval-every", 2, "--meta", "--meta-start", 0, "--task", "pico",
              "--learn-inner-lr")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"model", "meta_head", "inner_lrs", "optimizer", "rng", "vocab_map"} <= set(ck)
    assert ck["vocab_map"].shape == (256,)  # the trimmed vocabulary's map travels with the weights
    s = checkpoint.rng_state()
    a = (np.random.rand(3), __import__("random").random(), torch.rand(3))
    checkpoint.set_rng_state(torch.load(_saved(tmp_path, {"rng": s}), weights_only=True)["rng"])
    b = (np.random.rand(3), __import__("random").random(), torch.rand(3))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])


def _saved(d, obj):
    torch.save(obj, d / "x.pt")
    return d / "x.pt"


def test_unreadable_checkpoints_are_one_line_errors(data_dir, tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match=r"ckpt.pt cannot be read safely .*truncated, corrupt"):
        eval_ner.load_checkpoint(bad, "cpu")
    torch.save({"model_args": {}, "evil": np.arange(3)}, bad)  # needs numpy's unpickler: refused, not run
    with pytest.raises(UserError, match="cannot be read safely"):
        checkpoint.load(bad)
    with pytest.raises(SystemExit, match="--resume: .*ckpt.pt not found; train without --resume first"):
        run_train(data_dir, tmp_path / "none", "--resume")


def test_bins_that_disagree_with_meta_json_are_refused(data_dir, tmp_path):
    for cut in (1, 2):  # an odd byte count, and a file cut on a token boundary
        d = tmp_path / f"cut{cut}"
        shutil.copytree(data_dir, d)
        b = (d / "val.bin").read_bytes()
        (d / "val.bin").write_bytes(b[:-cut])
        with pytest.raises(SystemExit, match=rf"val.bin has {len(b) - cut:,} bytes, but meta.json says .* re-run data.py"):
            run_train(d, tmp_path / "o", "--max-steps", 1)
    (d / "meta.json").write_text('{"encoding": ')
    with pytest.raises(SystemExit, match="meta.json is corrupt; re-run data.py"):
        run_train(d, tmp_path / "o", "--max-steps", 1)


def test_fingerprint_covers_the_split(corpus_txt, tmp_path):
    metas = [data.prepare([str(corpus_txt)], tmp_path / str(f), vocab_size=256, val_fraction=f) for f in (0.1, 0.2)]
    assert data.fingerprint(metas[0]) != data.fingerprint(metas[1])
    assert not list(tmp_path.rglob("*.tmp"))  # written through temp files, none left behind


def test_abbreviated_flags_are_refused_by_every_command(capsys):
    for parse in (config.get_args, eval_ner.parse, data.main, compare.main, inspect_episodes.main):
        with pytest.raises(SystemExit) as e:
            parse(["--max-step", "8"])
        assert e.value.code == 2, parse
    assert "unrecognized arguments: --max-step" in capsys.readouterr().err


def test_flags_given_again_on_resume_take_effect_or_are_refused(data_dir, tmp_path):
    run_train(data_dir, tmp_path, "--max-steps", 4, "--eval-every", 4, "--dynamics-every", 0)
    run_train(data_dir, tmp_path, "--resume", "--max-steps", 6, "--weight-decay", 0.5)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 0.5 and ck["config"]["weight_decay"] == 0.5
    assert ck["optimizer"]["param_groups"][1]["weight_decay"] == 0.0  # gains still never decay
    with pytest.raises(SystemExit, match="--block-size 64: .* was trained with 32, which a resumed run cannot change"):
        run_train(data_dir, tmp_path, "--resume", "--max-steps", 8, "--block-size", 64)


def test_compare_drops_a_torn_last_line_and_names_a_damaged_one(tmp_path, capsys):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 0, "val_loss": 9}\n{"step": 5, "val_l')
    assert compare.read_jsonl(p) == [{"step": 0, "val_loss": 9}]
    assert "log.jsonl line 2 is torn" in capsys.readouterr().err
    p.write_text('{"step": 0, "val_l\n{"step": 5, "val_loss": 9}\n')
    with pytest.raises(UserError, match="log.jsonl line 1 is not JSON"):
        compare.read_jsonl(p)



def test_a_checkpoint_whose_head_does_not_fit_is_a_one_line_error(data_dir, tmp_path):
    run_train(data_dir, tmp_path, "--max-steps", 2, "--eval-every", 2, "--dynamics-every", 0)
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    del ck["meta_head"]["log_scale"]  # as if written by a run with another head
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="has another episode head .*saved --task smlmt"):
        run_train(data_dir, tmp_path, "--resume", "--max-steps", 4)
