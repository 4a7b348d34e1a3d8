"""scripts/gpu.sh, the one prepared device call, checked on a CPU: DRY=1 runs every stage at toy
shapes from a copy of the checkout with no ../shared beside it and nothing carried."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checkout_copy(dest):
    """The files a device receives: the tracked ones (a clean checkout), without data or runs."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
        files = [f.decode() for f in files if f and (ROOT / f.decode()).exists()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the sources as they are
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not
                 any(part in ("data", "runs", "out", ".git", "__pycache__", ".carry") for part in p.relative_to(ROOT).parts)]
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    return dest


def test_the_dry_run_of_gpu_sh_writes_valid_outputs_from_a_bare_checkout(tmp_path):
    repo = checkout_copy(tmp_path / "repo")  # no ../shared beside it, no .carry in it
    assert not (repo / ".carry").exists() and not (tmp_path / "shared").exists()
    out = tmp_path / "out"
    env = {**os.environ, "DRY": "1", "PYTHON": sys.executable, "OUT": str(out)}
    p = subprocess.Popen(["bash", "scripts/gpu.sh"], cwd=repo, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:  # a hung stage: end the script and every process it started
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0 and "check: ok" in log, log[-3000:]
    assert sorted(f.name for f in out.iterdir()) == ["bench.jsonl", "gpu.log", "loss.jsonl", "report.md", "study.tgz"]
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["size"] for r in bench] == ["11m"] and bench[0]["lm_tok_s"] > 0 and bench[0]["grad_accum"] == 1
    loss = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(loss) == 1 and loss[0]["loss"]["full logits"]["ms"] > 0
    assert "embedded" in log and "cut after" not in log and "failed" not in log
