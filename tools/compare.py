"""
Compare training runs side by side: does meta-learning help?

    python -m tools.compare out/vanilla out/meta --ner r_vanilla.json,r_meta.json --out report.md
    python -m tools.compare out/v-s1 out/v-s2 out/v-s3 out/m-s1 out/m-s2 out/m-s3   # arms of 3 seeds
    python -m tools.compare --arm vanilla=out/v1,out/v2 --arm meta=out/m1,out/m2

For each target val loss: the step, tokens, FLOPs and seconds at which each run first reached
it (linear interpolation between evals; never extrapolated), and the speedup against the first
run (the paper's "same loss up to 1.6x sooner"). Then final loss and perplexity, val-episode
accuracy, UNER F1, and summaries of the learning dynamics (when and how far activation
effective rank and head entropy rose and fell). Plots when matplotlib is installed.

Several seeds: runs with the same config except --seed and --out-dir form an arm (or name arms
with --arm); arms.py adds their statistics: mean +- standard deviation over seeds, the
difference to the first arm paired by seed with a 95% t interval, at equal steps, tokens and
FLOPs, and that gap at every eval ("the gap over training": tables, gap.png, gap.json). Plots
then draw one colour per arm. NER results of several checkpoints or protocols: --ner once per
set, with a label (--ner head@600=a.json,b.json --ner full=c.json,d.json).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from data import fingerprint
from plumbing.errors import UserError
from tools import adapt as adaptlib
from tools import arms as armslib
from tools.arms import crossing, group_arms, save


def read_jsonl(path):
    """The rows of a jsonl log. A torn last line (a run killed mid-write) is dropped with a
    warning; a bad line elsewhere is an error naming the file and line."""
    lines = [(i, line) for i, line in enumerate(open(path), 1) if line.strip()]
    rows = []
    for i, line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != lines[-1][0]:
                raise UserError(f"{path} line {i} is not JSON; the log is damaged") from None
            print(f"warning: {path} line {i} is torn (the run was killed while writing it); ignored", file=sys.stderr)
    return rows


def load_run(d):
    d = Path(d)
    if not (d / "log.jsonl").exists():
        raise UserError(f"{d}: no log.jsonl; is it a train.py --out-dir?")
    log = [r for r in read_jsonl(d / "log.jsonl") if r.get("val_loss") is not None]
    if not log:
        raise UserError(f"{d}/log.jsonl: no evaluations logged yet")
    dyn = read_jsonl(d / "dynamics.jsonl") if (d / "dynamics.jsonl").exists() else []
    info = json.loads((d / "run.json").read_text()) if (d / "run.json").exists() else {}
    return {"name": d.name, "dir": d, "log": log, "dyn": dyn, "info": info}


def check_same_data(runs):
    """Comparisons only mean something on the same tokens: same sources, encoding and vocabulary."""
    known = [r for r in runs if r["info"].get("data_meta")]
    for r in known[1:]:
        if fingerprint(r["info"]["data_meta"]) != fingerprint(known[0]["info"]["data_meta"]):
            raise UserError(f"{r['dir']} was trained on different data than {known[0]['dir']} "
                               "(data meta differs); compare runs on the same prepared data")


def default_targets(runs, n=3):
    """n losses every run crosses: from a point early in training (the lowest of the runs' second
    evals) down to the worst run's final loss."""
    worst_final = max(r["log"][-1]["val_loss"] for r in runs)
    early = min(r["log"][min(1, len(r["log"]) - 1)]["val_loss"] for r in runs)
    if early <= worst_final:
        return [math.ceil(worst_final * 100) / 100]
    return [round(float(t), 3) for t in np.linspace(early, worst_final, n + 1)[1:]]


def speedup(base, other):
    return base / other if base and other else None


def dyn_summary(rows, values):
    """Per layer: the step of the peak, rise (peak - start) and fall (peak - end); and, since small
    runs often fall first (from the random init) and rise later, the trough after the peak and
    the rebound from it (end - trough)."""
    v = np.array([values(r) for r in rows])  # (measurements, layers)
    steps = [r["step"] for r in rows]
    out = []
    for l, p in enumerate(v.argmax(0)):
        t = p + int(v[p:, l].argmin())  # the lowest point after the peak
        out.append({"peak_step": steps[p], "rise": float(v[p, l] - v[0, l]), "fall": float(v[p, l] - v[-1, l]),
                    "trough_step": steps[t], "rebound": float(v[-1, l] - v[t, l])})
    return out


def times(x):
    return "n/a" if x is None else f"{x:.2f}x"


def report(runs, targets, ner):
    base = runs[0]
    out = ["# Run comparison", "", "Runs: " + ", ".join(f"`{r['dir']}`" for r in runs) + f" (speedups against `{base['name']}`)", ""]
    out += ["## Time to target val loss", "", "| target | run | step | tokens | FLOPs | seconds | speedup (steps) | speedup (FLOPs) |",
            "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for t in targets:
        b = crossing(base["log"], t)
        for r in runs:
            c = crossing(r["log"], t)
            s_steps = speedup(b and b["step"], c and c["step"])
            s_flops = speedup(b and b["flops"], c and c["flops"])
            summary[(t, r["name"])] = (s_steps, s_flops)
            cells = ["not reached"] * 4 if c is None else [f"{c['step']:.1f}", f"{c['tokens']:,.0f}", f"{c['flops']:.3g}", f"{c['elapsed_s']:.1f}"]
            out.append(f"| {t} | {r['name']} | " + " | ".join(cells) + f" | {times(s_steps)} | {times(s_flops)} |")
    out += ["", "## Final", "", "val episodes: the fixed val episodes' query accuracy and loss before -> after the inner "
            "loop; meta loss: the training episodes' query loss since the previous eval (last logged value).", "",
            "| run | steps | val loss | perplexity | FLOPs | val episodes acc | val episodes loss | meta loss | "
            "last layer's activation ER |", "|---|---|---|---|---|---|---|---|---|"]
    num = lambda v, fmt: "-" if v is None else format(v, fmt)
    for r in runs:
        f = r["log"][-1]
        def change(key):  # "before -> after (after - before)": what the inner loop bought
            b, a = f.get(f"episode_{key}_before"), f.get(f"episode_{key}_after")
            return "-" if b is None or a is None else f"{b:.3f} -> {a:.3f} ({a - b:+.3f})"
        acc, eloss = change("acc"), change("loss")
        ml = next((row["meta_loss"] for row in reversed(r["log"]) if row.get("meta_loss") is not None), None)
        out.append(f"| {r['name']} | {f['step']} | {f['val_loss']:.4f} | {math.exp(f['val_loss']):.1f} | {f['flops']:.3g} "
                   f"| {acc} | {eloss} | {num(ml, '.3f')} | {num(r['dyn'][-1]['er_act'][-1] if r['dyn'] else None, '.1f')} |")
    texts = sorted({n for r in runs for n in (r["log"][-1].get("eval_text") or {})})
    if texts:
        out += ["", "## Held-out text (train.py --eval-text)", "",
                "Loss in nats per token, bits per UTF-8 byte (comparable across vocabularies where few tokens are "
                "<unk>), and the share of scored tokens that are <unk>.", "",
                "| run | " + " | ".join(f"{t} loss / bpb / unk" for t in texts) + " |", "|---" * (len(texts) + 1) + "|"]
        for r in runs:
            et = r["log"][-1].get("eval_text") or {}
            out.append(f"| {r['name']} | " + " | ".join(
                f"{et[t]['loss']:.4f} / {et[t]['bpb']:.4f} / {et[t]['unk_frac']:.3f}" if t in et else "-" for t in texts) + " |")
    for label, files in ner.items():
        codes = sorted(set().union(*(n["results"] for n in files if n)))
        out += ["", f"## Universal NER F1 (%){' — ' + label if label else ''}", "",
                "| test set | " + " | ".join(r["name"] for r in runs) + " | " +
                " | ".join(f"{r['name']} - {base['name']}" for r in runs[1:]) + " |", "|---" * (2 * len(runs)) + "|"]
        for code in codes + ["average"]:
            f1 = [100 * (float("nan") if not n else n["avg_f1"] if code == "average" else
                         n["results"].get(code, {}).get("f1", float("nan"))) for n in files]
            out.append(f"| {code} | " + " | ".join(f"{v:.2f}" for v in f1) + " | " + " | ".join(f"{v - f1[0]:+.2f}" for v in f1[1:]) + " |")
    learned = [r for r in runs if r["log"][-1].get("inner_lrs")]
    if learned:
        out += ["", "## Learned inner step sizes (--learn-inner-lr)", "",
                "Per layer, at the last eval: the geometric mean of its tensors' step sizes, and the smallest and "
                "largest (smlmt's head.w steps in logit units; the others in parameter units).", ""]
        for r in learned:
            first = next(x["inner_lrs"] for x in r["log"] if x.get("inner_lrs"))
            out += [f"`{r['name']}` (started at {min(first.values()):.3g}):", "",
                    "| layer | tensors | geometric mean | smallest | largest |", "|---|---|---|---|---|"]
            for layer, lrs in lr_layers(r["log"][-1]["inner_lrs"]).items():
                lo, hi = min(lrs, key=lrs.get), max(lrs, key=lrs.get)
                gm = math.exp(np.mean(np.log(list(lrs.values()))))
                out.append(f"| {layer} | {len(lrs)} | {gm:.4g} | {lrs[lo]:.4g} ({lo}) | {lrs[hi]:.4g} ({hi}) |")
            out.append("")
    with_dyn = [r for r in runs if len(r["dyn"]) >= 2]
    for title, values in (("activation effective rank", lambda row: row["er_act"]),
                          ("mean head entropy (nats)", lambda row: [float(np.mean(h)) for h in row["attn_entropy"]])):
        if not with_dyn:
            break
        out += ["", f"## Dynamics: {title} per layer", "",
                "peak / rise / fall: the step of the maximum, peak - start, peak - end. "
                "trough / rebound: the lowest step after the peak, end - trough.", "",
                "| layer | " + " | ".join(f"{r['name']} peak / rise / fall | {r['name']} trough / rebound" for r in with_dyn) + " |",
                "|---" * (2 * len(with_dyn) + 1) + "|"]
        sums = [dyn_summary(r["dyn"], values) for r in with_dyn]
        for l in range(len(sums[0])):
            out.append(f"| {l} | " + " | ".join(f"{s[l]['peak_step']} / {s[l]['rise']:+.2f} / {s[l]['fall']:+.2f} | "
                                                 f"{s[l]['trough_step']} / {s[l]['rebound']:+.2f}" for s in sums) + " |")
    return "\n".join(out) + "\n", summary


def lr_layers(inner_lrs):
    """{layer: {tensor: step size}}: the embedding, each block, the final norm, the episode head."""
    out = {}
    for name, lr in inner_lrs.items():
        parts = name.split(".")
        layer = f"block {parts[1]}" if parts[0] == "layers" else {"tok_emb": "embedding", "norm": "final norm"}.get(parts[0], parts[0])
        tensor = ".".join(parts[2:-1] if parts[0] == "layers" else parts[1:]) or parts[0]
        out.setdefault(layer, {})[tensor] = lr
    rank = lambda k: (0, 0) if k == "embedding" else (1, int(k.split()[1])) if k.startswith("block ") else (2, k != "final norm")
    return dict(sorted(out.items(), key=lambda kv: rank(kv[0])))  # input to output


def matplotlib_or_none():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plots(runs, arms, out_dir):
    """With arms of several seeds, one colour per arm (arms.arm_plots); else one line per run."""
    plt = matplotlib_or_none()
    if plt is None:
        print("note: matplotlib is not installed, so no plots (pip install matplotlib); tables only")
        return []
    if arms:
        return armslib.arm_plots(arms, out_dir, plt) + armslib.arm_dynamics_plots(arms, out_dir, plt) + inner_lr_plots(runs, out_dir, plt)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        axes[0].plot([x["step"] for x in r["log"]], [x["val_loss"] for x in r["log"]], marker=".", label=r["name"])
        axes[1].plot([x["flops"] for x in r["log"]], [x["val_loss"] for x in r["log"]], marker=".", label=r["name"])
    for ax, xl in zip(axes, ("step", "estimated FLOPs")):
        ax.set_xlabel(xl), ax.set_ylabel("val loss"), ax.legend(), ax.grid(alpha=0.3)
    files.append(save(fig, out_dir / "val_loss.png"))
    with_dyn = [r for r in runs if r["dyn"]]
    for name, values, ylabel in (("er_act.png", lambda row: row["er_act"], "activation effective rank"),
                                 ("head_entropy.png", lambda row: [np.mean(h) for h in row["attn_entropy"]], "mean head entropy (nats)")):
        if not with_dyn:
            break
        fig, axes = plt.subplots(1, len(with_dyn), figsize=(5.5 * len(with_dyn), 4), sharey=True, squeeze=False)
        for ax, r in zip(axes[0], with_dyn):
            v = np.array([values(row) for row in r["dyn"]])  # (measurements, layers)
            steps = [row["step"] for row in r["dyn"]]
            for l in range(v.shape[1]):
                ax.plot(steps, v[:, l], color=plt.cm.viridis(l / max(1, v.shape[1] - 1)), label=f"layer {l}")
            ax.set_title(r["name"]), ax.set_xlabel("step"), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, ncol=2, loc="best", framealpha=0.6)
        files.append(save(fig, out_dir / name))
    return files + inner_lr_plots(runs, out_dir, plt)


def inner_lr_plots(runs, out_dir, plt):
    files = []
    for r in [r for r in runs if r["log"][-1].get("inner_lrs")]:  # learned step size per block, one line per tensor
        layers = lr_layers(r["log"][-1]["inner_lrs"])
        blocks = sorted((int(k.split()[1]), v) for k, v in layers.items() if k.startswith("block "))
        fig, ax = plt.subplots(figsize=(7, 4))
        for t in sorted({t for _, v in blocks for t in v}):
            ax.plot([b for b, v in blocks if t in v], [v[t] for _, v in blocks if t in v], marker=".", label=t)
        ax.set_yscale("log"), ax.set_xlabel("block"), ax.set_ylabel("learned inner step size"), ax.grid(alpha=0.3)
        ax.set_title(f"{r['name']}, step {r['log'][-1]['step']}"), ax.legend(fontsize=7)
        files.append(save(fig, out_dir / f"inner_lrs_{r['name']}.png"))
    return files


def file_set(spec, runs, flag, writer):
    """(label, [the JSON of each run's file, or None for '-']) of a flag's [LABEL=]FILE,FILE,... value."""
    label, _, names = spec.rpartition("=")
    names = names.split(",")
    if len(names) != len(runs):
        raise UserError(f"{flag}{' ' + label if label else ''}: {len(names)} files for {len(runs)} runs; give one per run, "
                        "in order")
    for f in names:
        if f != "-" and not Path(f).exists():
            raise UserError(f"{flag}: {f} not found; write it with {writer}")
    return label, [None if f == "-" else json.loads(Path(f).read_text()) for f in names]  # -: none for that run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("runs", nargs="*", help="train.py output directories; the first (arm) is the baseline")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=DIR,DIR,...",
                   help="name an arm and its runs (one per seed), instead of grouping the runs by config")
    p.add_argument("--targets", help="comma-separated val losses (default: spread over what every run crosses)")
    p.add_argument("--ner", action="append", default=[], metavar="[LABEL=]FILE,FILE,...",
                   help="eval_ner.py --out files, one per run, in the same order ('-' for a run without one); "
                        "repeatable with a label each (e.g. head@600=..., full=...)")
    p.add_argument("--adapt", action="append", default=[], metavar="[LABEL=]FILE,FILE,...",
                   help="tools/adapt.py --out files, one per run, in the same order ('-' for none); once per text, "
                        "labelled (default: the text's file name)")
    p.add_argument("--out", default="report.md", help="markdown report; plots go beside it")
    a = p.parse_args(argv)
    try:
        if bool(a.runs) == bool(a.arm):
            raise UserError("give run directories, or arms with --arm NAME=DIR,DIR,... (not both)")
        arms = []
        for spec in a.arm:
            name, _, dirs = spec.partition("=")
            if not name or not dirs:
                raise UserError(f"--arm {spec!r}: write NAME=DIR,DIR,...")
            arms.append((name, [load_run(d) for d in dirs.split(",")]))
        runs = [load_run(d) for d in a.runs] or [r for _, rs in arms for r in rs]
        arms = arms or group_arms(runs)
        check_same_data(runs)
        targets = [float(t) for t in a.targets.split(",")] if a.targets else default_targets(runs)
        ner = dict(file_set(spec, runs, "--ner", "eval_ner.py --out") for spec in a.ner)
        adapted = {}
        for spec in a.adapt:
            label, files = file_set(spec, runs, "--adapt", "python -m tools.adapt --out")
            got = {r["dir"]: f for r, f in zip(runs, files) if f is not None}
            adapted[label or Path(next(iter(got.values()))["text"]).name.split(".")[0]] = got
    except (UserError, ValueError) as e:
        sys.exit(f"compare.py: error: {e}")
    text, summary = report(runs, targets, ner)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seeded = a.arm or any(len(rs) > 1 for _, rs in arms)
    if seeded:
        by_dir = {label: {r["dir"]: n for r, n in zip(runs, files) if n} for label, files in ner.items()}
        text += "\n" + "\n".join(armslib.arms_report(arms, targets, by_dir)) + "\n"
        if len(arms) > 1:
            (out.parent / "gap.json").write_text(json.dumps(armslib.gap_json(arms)))
    files = plots(runs, arms if seeded else None, out.parent)
    if adapted:  # one arm per run when the runs are not grouped by seeds
        by_arm = arms if seeded else [(r["name"], [r]) for r in runs]
        text += "\n" + "\n".join(adaptlib.report(by_arm, adapted)) + "\n"
        plt = matplotlib_or_none()
        files += adaptlib.plots(by_arm, adapted, out.parent, plt) if plt else []
    text += "".join(f"\n![{f.stem}]({f.name})\n" for f in files)
    out.write_text(text)
    print(text)
    print(f"wrote {out}" + (f" and {len(files)} plots" if files else ""))
    return summary


if __name__ == "__main__":
    main()
