"""
One command for a study: arms x seeds of train.py runs, the NER probe on each final checkpoint,
and compare.py over all of them into one report.

    python -m tools.study --data-dir data/enwiki8k --arms vanilla,smlmt,pico --seeds 1,2,3 --tokens 1.2e6 \
        --out runs/study -- --size 11m --device cpu --batch-size 16 --block-size 128 --lr 2e-3 --warmup-steps 30
    python -m tools.study ... --plan --budget-min 60        # the runs, their estimated time, what fits

Flags after `--` go to every train.py run. An arm is a named flag set (ARMS below, or
--arm NAME="FLAGS", repeatable). Runs go seed-major (seed 1 of every arm, then seed 2, ...), so
a study cut short is still balanced. Re-running the same command skips finished runs and
resumes partial ones (train.py --resume), so a killed study finishes where it stopped.
"""
import argparse
import contextlib
import io
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import eval_ner
import train
from plumbing import config
from plumbing.errors import UserError
from tools import bench, compare

ARMS = {"vanilla": [], "smlmt": ["--meta"], "pico": ["--meta", "--task", "pico"], "lm": ["--meta", "--task", "lm"]}


def parse(argv=None):
    argv = sys.argv[1:] if argv is None else list(map(str, argv))
    ours, train_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--data-dir", required=True, help="prepared by data.py, shared by every run")
    p.add_argument("--arms", default="vanilla,smlmt", help="comma-separated arm names (" + ", ".join(ARMS) + ")")
    p.add_argument("--arm", action="append", default=[], metavar='NAME="FLAGS"', help="define an arm of your own")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    p.add_argument("--tokens", type=float, required=True, help="training tokens per run (sets --max-steps)")
    p.add_argument("--eval-runs", type=int, default=6, help="evals per run (sets --eval-every)")
    p.add_argument("--out", required=True, help="one directory per run (ARM-sSEED), the NER files and report.md")
    p.add_argument("--uner-dir", help="probe each final checkpoint on UNER (eval_ner.py --mode head, trained on --ner-train)")
    p.add_argument("--ner-train", default="da_ddt", help="eval_ner.py --train")
    p.add_argument("--plan", action="store_true", help="print the runs and their estimated time, run nothing")
    p.add_argument("--budget-min", type=float, default=None,
                   help="with --plan: say which runs fit in this many minutes; without: time a step first, then run only "
                        "the seeds whose runs (every arm) fit")
    a = p.parse_args(ours)
    arms = dict(ARMS) | {k: shlex.split(v) for k, v in (s.split("=", 1) for s in a.arm)}
    for name in a.arms.split(","):
        if name not in arms:
            p.error(f"--arms {name}: no such arm; define it with --arm {name}=\"FLAGS\" or choose from {', '.join(arms)}")
    return a, {n: arms[n] for n in a.arms.split(",")}, train_flags


def runs(a, arms, train_flags):
    """[(name, out dir, train.py argv)], seed-major."""
    t = config.get_args(["--data-dir", a.data_dir, *train_flags])  # the shapes every run shares
    steps = max(1, round(a.tokens / (t.batch_size * t.block_size * t.grad_accum)))
    every = max(1, steps // a.eval_runs)
    out = []
    for seed in a.seeds.split(","):
        for name, flags in arms.items():
            d = Path(a.out) / f"{name}-s{seed}"
            out.append((f"{name}-s{seed}", d, ["--data-dir", a.data_dir, "--recipe", t.recipe, *train_flags,
                                                "--max-steps", str(steps),
                                                "--eval-every", str(every), "--seed", seed, "--out-dir", str(d), *flags]))
    return out, steps


def finished(d, steps):
    """A run is finished when its log holds the eval of its last step."""
    log = Path(d) / "log.jsonl"
    rows = [json.loads(line) for line in open(log) if line.strip()] if log.exists() else []
    return bool(rows) and rows[-1].get("step") == steps and (Path(d) / "ckpt.pt").exists()


def plan(a, todo, steps, train_flags):
    """Time LM and meta steps as bench.py does (train.train_step on a run built by train.setup),
    then every run from them."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        t = config.get_args(["--data-dir", a.data_dir, *train_flags, "--meta", "--eval-episodes", "0",
                             "--dynamics-every", "0", "--out-dir", tmp])
        run = train.setup(t, 0, 1, *config.hardware(t.device, t.dtype))
        ms = {k: bench.timed(lambda: train.train_step(run, t, k, 0), 1, 2, run.device) for k in ("lm", "meta")}
    total, seconds = 0.0, []
    print(f"{len(todo)} runs of {steps} steps; measured: LM step {ms['lm']:.0f} ms, meta step {ms['meta']:.0f} ms")
    for name, d, argv in todo:
        meta_frac = 0.25 if "--meta" in argv else 0.0  # half of the steps after --meta-start (half of the run)
        s = 0.0 if finished(d, steps) else steps * (ms["lm"] * (1 - meta_frac) + ms["meta"] * meta_frac) / 1000
        total += s
        seconds.append(s)
        fits = a.budget_min is None or total <= 60 * a.budget_min
        print(f"  {name:<16} {'done' if s == 0 else f'{s / 60:6.1f} min'}  (total {total / 60:6.1f} min)"
              + ("" if fits else "  beyond --budget-min"))
    return seconds


def within_budget(a, todo, seconds):
    """The runs of the seeds whose every run fits in --budget-min (seed-major: whole seeds, so the
    arms stay balanced)."""
    per_seed = len(todo) // len(a.seeds.split(","))
    keep, total = [], 0.0
    for i in range(0, len(todo), per_seed):
        total += sum(seconds[i : i + per_seed])
        if total > 60 * a.budget_min:
            break
        keep += todo[i : i + per_seed]
    if not keep:
        raise UserError(f"--budget-min {a.budget_min:g}: the first seed's runs take {sum(seconds[:per_seed]) / 60:.1f} "
                        "min; give more minutes, fewer --tokens or fewer --arms")
    print(f"--budget-min {a.budget_min:g}: {len(keep) // per_seed} of {len(todo) // per_seed} seeds fit", flush=True)
    return keep


def call(main, argv, log):
    """A tool's main in this process (no interpreter start per run), its output into log; its
    one-line error as ours."""
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            main(argv)
        except SystemExit as e:
            if e.code not in (None, 0):
                raise UserError(f"{str(e.code).strip()} (log: {log})") from None


def main(argv=None):
    try:
        a, arms, train_flags = parse(argv)
        todo, steps = runs(a, arms, train_flags)
        if a.plan:
            return plan(a, todo, steps, train_flags)
        if a.budget_min is not None:
            todo = within_budget(a, todo, plan(a, todo, steps, train_flags))
        Path(a.out).mkdir(parents=True, exist_ok=True)
        for name, d, argv in todo:
            if finished(d, steps):
                print(f"{name}: finished, skipped")
                continue
            resume = ["--resume"] if (d / "ckpt.pt").exists() else []
            print(f"{name}: {'resuming' if resume else 'training'}", flush=True)
            t0 = time.time()
            call(train.main, [*argv, *resume], d.parent / f"{name}.log")
            print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
        report(a, todo)
    except UserError as e:
        sys.exit(f"study.py: error: {e}")


def report(a, todo):
    """The NER probe on each final checkpoint (kept when already written), then compare.py."""
    ner = []
    for name, d, _ in todo if a.uner_dir else ():
        f = Path(a.out) / f"ner_{name}.json"
        if not f.exists():
            call(eval_ner.main, ["--ckpt", str(d / "ckpt.pt"), "--uner-dir", a.uner_dir, "--train", a.ner_train,
                                 "--mode", "head", "--out", str(f)], Path(a.out) / f"ner_{name}.log")
        ner.append(str(f))
    argv = [*[str(d) for _, d, _ in todo], "--out", str(Path(a.out) / "report.md")]
    call(compare.main, argv + (["--ner", ",".join(ner)] if ner else []), Path(a.out) / "compare.log")
    print(f"report: {Path(a.out) / 'report.md'}")


if __name__ == "__main__":
    main()
