"""Is a meta arm's larger drop in fine-tuning a meta effect, or only its higher start?

A checkpoint that starts higher has more to lose, whatever made it so. Vanilla gives two points per
seed: its step-1,200 checkpoint (higher start; the meta arms' own checkpoint at that step, since
their meta steps begin after it) and its step-2,400 one. Along the line through them, the drop a
vanilla checkpoint would show if it started where a meta checkpoint starts; the meta arm's drop minus
that, paired by seed with its 95% t interval. Reads the adapt/ files run.sh writes; prints markdown.

    python results/adapt-study-2026-12-06/control.py
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tools.arms
from tools.arms import cell, paired  # noqa: E402

HERE = Path(__file__).parent / "adapt"
ARMS = ["smlmt", "smlmt-sep", "pico"]
SEEDS = [1, 2, 3]


def point(label, run, n):
    """(loss at step 0, drop to the last step) of one file's budget n, or None if the file is missing."""
    f = HERE / f"{label}_{run}.json"
    if not f.is_file():
        return None
    c = json.loads(f.read_text())["budgets"][str(n)]["curve"]
    return c[0]["loss"], c[0]["loss"] - c[-1]["loss"]


def main():
    print("| text, budget | vanilla 1,200: start, drop | vanilla 2,400: start, drop | "
          + " | ".join(f"{a}: drop − vanilla's line at its start" for a in ARMS) + " |")
    print("|---" * (3 + len(ARMS)) + "|")
    for label in ("udhr", "tinystories", "shakespeare"):
        first = HERE / f"{label}_vanilla1200-s1.json"
        if not first.is_file():
            continue
        for n in sorted(int(k) for k in json.loads(first.read_text())["budgets"]):
            early = {s: point(label, f"vanilla1200-s{s}", n) for s in SEEDS}
            late = {s: point(label, f"vanilla-s{s}", n) for s in SEEDS}
            mean = lambda pts, i: sum(p[i] for p in pts.values() if p) / max(1, sum(1 for p in pts.values() if p))
            cells = [f"{mean(early, 0):.3f}, {mean(early, 1):.3f}", f"{mean(late, 0):.3f}, {mean(late, 1):.3f}"]
            for arm in ARMS:
                excess = {}
                for s in SEEDS:
                    m, e, v = point(label, f"{arm}-s{s}", n), early[s], late[s]
                    if m and e and v:  # vanilla's drop as a line in the start loss, read at the meta start
                        slope = (e[1] - v[1]) / (e[0] - v[0])
                        excess[s] = m[1] - (v[1] + slope * (m[0] - v[0]))
                cells.append(cell(*paired({s: 0.0 for s in excess}, excess)))
            print(f"| {label}, {n:,} tokens | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
