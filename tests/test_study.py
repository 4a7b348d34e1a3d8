"""tools/study.py: arms x seeds, seed-major, one report; a re-run skips finished runs and resumes partial ones."""
import json

import pytest
from conftest import TINY

import train
from tools import study


def rows(d):
    return [json.loads(line) for line in open(d / "log.jsonl")]


def test_a_study_runs_end_to_end_and_a_rerun_finishes_only_what_is_missing(data_dir, tmp_path, capsys):
    args = ["--data-dir", data_dir, "--arms", "vanilla,smlmt", "--seeds", "1,2", "--tokens", 128 * 8, "--eval-runs", 2,
            "--out", tmp_path, "--", *TINY, "--eval-episodes", "0", "--meta-start", "0"]
    study.main(args)
    out = capsys.readouterr().out
    order = [line.split(":")[0] for line in out.splitlines() if line.endswith(": training")]
    assert order == ["vanilla-s1", "smlmt-s1", "vanilla-s2", "smlmt-s2"]  # seed-major
    report = (tmp_path / "report.md").read_text()
    assert "Arms over seeds" in report and "smlmt" in report
    finals = {d.name: rows(d)[-1] for d in tmp_path.iterdir() if d.is_dir()}
    assert all(r["step"] == 8 for r in finals.values()) and finals["smlmt-s1"]["meta_steps"] > 0

    # a killed study: one run gone, another cut at step 4, the other two finished
    todo_dirs = {n: (d, argv) for n, d, argv in study.runs(*study.parse(args))[0]}
    mtime = (tmp_path / "vanilla-s1" / "log.jsonl").stat().st_mtime_ns
    for name in ("vanilla-s2", "smlmt-s2"):
        for f in (tmp_path / name).iterdir():
            f.unlink()
    d, argv = todo_dirs["smlmt-s2"]
    train.main([*argv, "--max-steps", "4", "--decay-steps", "8"])  # its first half
    capsys.readouterr()
    study.main(args)
    out = capsys.readouterr().out
    assert "vanilla-s1: finished, skipped" in out and "smlmt-s1: finished, skipped" in out
    assert "vanilla-s2: training" in out and "smlmt-s2: resuming" in out
    assert (tmp_path / "vanilla-s1" / "log.jsonl").stat().st_mtime_ns == mtime  # not redone
    for name, r in finals.items():  # the finished study again, bit for bit
        assert rows(tmp_path / name)[-1]["val_loss"] == r["val_loss"], name


def test_plan_prints_every_run_and_its_estimate(data_dir, tmp_path, capsys):
    study.main(["--data-dir", data_dir, "--arms", "vanilla,smlmt", "--seeds", "1", "--tokens", 1280, "--out", tmp_path,
                "--plan", "--budget-min", 0.001, "--", *TINY])
    out = capsys.readouterr().out
    assert "2 runs of 10 steps; measured: LM step" in out
    assert "vanilla-s1" in out and "smlmt-s1" in out and "beyond --budget-min" in out
    assert not (tmp_path / "vanilla-s1").exists()  # a plan runs nothing


def test_an_unknown_arm_names_the_flag_that_defines_one(data_dir, tmp_path):
    with pytest.raises(SystemExit):
        study.main(["--data-dir", data_dir, "--arms", "nope", "--tokens", 100, "--out", tmp_path])
