"""
Arms over seeds, for compare.py: runs with the same config but --seed form an arm. Every
figure is given as mean +- standard deviation over an arm's seeds, and for every arm after the
first as the difference to the first, paired by seed, with a 95% t interval ("not significant"
when it spans 0). The gap over training is that difference at every eval, at equal steps,
tokens, FLOPs and LM steps: does a deficit shrink, hold or grow as training lengthens? Plots draw one
colour per arm: its mean over seeds and a band (min to max of the seeds; for a gap, the 95%
interval).
"""
import json
import math
import re

import numpy as np

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (normal beyond)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
NOT_THE_ARM = {"seed", "out_dir", "data_dir", "resume", "given"}  # config keys that may differ within an arm
BASES = (("step", "steps"), ("tokens", "tokens"), ("flops", "FLOPs"), ("lm_steps", "LM steps"))


def bases(runs):
    """The axes every run's log has. Equal LM steps sets the LM steps a meta arm kept against
    the vanilla run's: what is left of the gap there is the meta steps' own effect on the LM,
    not the LM steps they replaced."""
    return [(k, u) for k, u in BASES if all(k in row for r in runs for row in r["log"])]
val_loss = lambda row: row["val_loss"]


def crossing(log, target):
    """The first point where val loss reaches target, interpolated linearly between the two evals
    around it: {step, tokens, flops, elapsed_s}, or None if the run never got there."""
    for i, r in enumerate(log):
        if r["val_loss"] <= target:
            if i == 0:
                return {k: float(r[k]) for k in ("step", "tokens", "flops", "elapsed_s")}
            p = log[i - 1]
            frac = (p["val_loss"] - target) / (p["val_loss"] - r["val_loss"])
            return {k: p[k] + frac * (r[k] - p[k]) for k in ("step", "tokens", "flops", "elapsed_s")}
    return None


def at(log, key, x, value=val_loss):
    """value(row) where `key` (step, tokens or flops) equals x, interpolated linearly between
    evals; None outside the run or where an eval lacks the value."""
    for p, r in zip(log, log[1:]):
        if p[key] <= x <= r[key]:
            vp, vr = value(p), value(r)
            if vp is None or vr is None:
                return None
            return vp + (x - p[key]) / (r[key] - p[key]) * (vr - vp) if r[key] > p[key] else vr
    return value(log[-1]) if x == log[-1][key] else None


def text_bpb(name):
    return lambda row: (row.get("eval_text") or {}).get(name, {}).get("bpb")


def group_arms(runs):
    """[(name, runs)]: runs whose configs differ only in NOT_THE_ARM, in order of first appearance;
    named after the first run's directory without a trailing seed (vanilla-s2 -> vanilla)."""
    arms = {}
    for r in runs:
        cfg = r["info"].get("config")
        key = str(r["dir"]) if cfg is None else json.dumps({k: v for k, v in cfg.items() if k not in NOT_THE_ARM},
                                                           sort_keys=True, default=str)
        arms.setdefault(key, []).append(r)
    named = [(re.sub(r"[-_.]?s(eed)?\d+$", "", rs[0]["name"]) or rs[0]["name"], rs) for rs in arms.values()]
    return [(n if [m for m, _ in named].count(n) == 1 else f"{n}#{i}", rs) for i, (n, rs) in enumerate(named)]


def seed(r):
    return r["info"].get("config", {}).get("seed", str(r["dir"]))


def task(r):
    return r["info"].get("config", {}).get("task")


def mean_sd(values):
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    return f"{np.mean(v):.4g}" + (f" ± {np.std(v, ddof=1):.2g}" if len(v) > 1 else "")


def paired(base, other):
    """Mean difference other - base over the seeds both have, its 95% t interval, and whether the
    interval excludes 0. None where fewer than 2 seeds pair (no interval)."""
    d = [other[s] - base[s] for s in base if s in other and base[s] is not None and other[s] is not None]
    if len(d) < 2:
        return (d[0] if d else None), None, None
    half = (T975[len(d) - 2] if len(d) <= 31 else 1.96) * np.std(d, ddof=1) / math.sqrt(len(d))
    m = float(np.mean(d))
    return m, (m - half, m + half), not (m - half <= 0 <= m + half)


def cell(m, ci, sig):
    if m is None:
        return "-"
    if ci is None:
        return f"{m:+.4g} (1 seed: no interval)"
    if ci == (0.0, 0.0):  # e.g. before --meta-start a meta run is the same run as its vanilla seed
        return "0 (identical)"
    return f"{m:+.4g} [{ci[0]:+.3g}, {ci[1]:+.3g}]" + ("" if sig else " not significant")


def diff(base_runs, runs, value):
    """paired() of value(run) between two arms' runs, matched by seed."""
    return paired({seed(r): value(r) for r in base_runs}, {seed(r): value(r) for r in runs})


def arm_figures(runs, targets, ner_sets):
    """{figure: {run dir: value}} over all runs. Final val losses at the step, tokens and FLOPs
    every run reached (equal steps / tokens / FLOPs); steps to each target; val episodes;
    held-out text; NER F1 of each set of NER files ({label: {run dir: eval_ner.py JSON}})."""
    figs = {}
    for key, unit in bases(runs):
        x = min(r["log"][-1][key] for r in runs)
        figs[f"val loss at equal {unit} ({x:.3g})"] = {r["dir"]: at(r["log"], key, x) for r in runs}
    for t in targets:
        figs[f"steps to val loss {t}"] = {r["dir"]: (crossing(r["log"], t) or {}).get("step") for r in runs}
    # val episodes of different tasks are different tests: one figure per task, never compared across
    for t in dict.fromkeys(map(task, runs)):
        figs[f"val {t + ' ' if t else ''}episodes acc after the inner loop"] = {
            r["dir"]: r["log"][-1].get("episode_acc_after") for r in runs if task(r) == t}
    for name in sorted({n for r in runs for n in (r["log"][-1].get("eval_text") or {})}):
        for m in ("loss", "bpb"):
            figs[f"held-out {name} {m}"] = {r["dir"]: (r["log"][-1].get("eval_text") or {}).get(name, {}).get(m)
                                            for r in runs}
    for label, by_dir in ner_sets.items():
        figs[f"UNER average F1 (%){' ' + label if label else ''}"] = {d: 100 * n["avg_f1"] for d, n in by_dir.items()}
        for code in sorted({c for n in by_dir.values() for c in n.get("apart", {})}):  # e.g. tl_trg, zero-shot
            figs[f"UNER {code} F1 (%){' ' + label if label else ''}"] = {
                d: 100 * n["apart"][code] if code in n.get("apart", {}) else None for d, n in by_dir.items()}
    return figs


def arms_report(arms, targets, ner_sets):
    runs = [r for _, rs in arms for r in rs]
    figs = arm_figures(runs, targets, ner_sets)
    base_name, base = arms[0]
    out = ["## Arms over seeds", "", "Mean ± standard deviation over each arm's seeds; the difference to "
           f"`{base_name}` is paired by seed, with its 95% t interval.", "",
           "| figure | " + " | ".join(f"{n} ({len(rs)} seed{'s' * (len(rs) > 1)})" for n, rs in arms) + " | " +
           " | ".join(f"{n} − {base_name}" for n, _ in arms[1:]) + " |", "|---" * (2 * len(arms)) + "|"]
    reading = []
    for fig, vals in figs.items():
        cells = [mean_sd([vals.get(r["dir"]) for r in rs]) for _, rs in arms]
        diffs = []
        for name, rs in arms[1:]:
            m, ci, sig = diff(base, rs, lambda r: vals.get(r["dir"]))
            diffs.append(cell(m, ci, sig))
            if ci == (0.0, 0.0):
                reading.append(f"- {name} − {base_name}, {fig}: identical in every seed")
            elif ci is not None:
                reading.append(f"- {name} − {base_name}, {fig}: {m:+.4g}, 95% CI [{ci[0]:+.3g}, {ci[1]:+.3g}]: "
                               + ("significant" if sig else "not significant"))
        out.append(f"| {fig} | " + " | ".join(cells + diffs) + " |")
    if reading:
        out += ["", "Reading (paired differences; \"not significant\" = the interval spans 0):", "", *reading]
    return out + gap_report(arms) + dynamics_report(arms)


# ----------------------------------------------------------------------------- the gap over training

def grid(arms, key):
    """The first run's eval points on `key` that every run reached."""
    end = min(r["log"][-1][key] for _, rs in arms for r in rs)
    return [row[key] for row in arms[0][1][0]["log"] if row[key] <= end]


def gap(arms, key, value=val_loss):
    """{arm: [(x, mean, low, high)]}: value(arm) - value(first arm) at every x of grid(key),
    paired by seed, with its 95% interval (low = high = mean with one seed)."""
    (_, base), xs = arms[0], grid(arms, key)
    out = {}
    for name, rs in arms[1:]:
        rows = []
        for x in xs:
            m, ci, _ = diff(base, rs, lambda r: at(r["log"], key, x, value))
            if m is not None:
                rows.append((x, m, *(ci or (m, m))))
        out[name] = rows
    return out


def quarters(arms, key):
    """The first run's evals nearest to 1/4, 1/2, 3/4 and all of what every run reached on `key`."""
    xs = grid(arms, key)
    return sorted({min(xs, key=lambda s: abs(s - q * xs[-1])) for q in (0.25, 0.5, 0.75, 1.0)})


def gap_report(arms):
    """Tables of the gap at the quarter points: val loss at equal steps, tokens, FLOPs and LM
    steps, and held-out bits per byte at equal steps."""
    if len(arms) < 2:
        return []
    base_name, base = arms[0]
    runs = [r for _, rs in arms for r in rs]
    head = "| " + " | ".join(f"{n} − {base_name}" for n, _ in arms[1:]) + " |"
    out = ["", "## The gap over training", "",
           f"Each arm minus `{base_name}`, paired by seed, with its 95% t interval, at the evals of "
           f"`{base[0]['name']}` nearest to a quarter, half, three quarters and all of what every run reached "
           "on that axis; the other runs are interpolated between their evals. Every eval: `gap.png`, `gap.json`."]
    texts = sorted({n for r in base for n in (r["log"][-1].get("eval_text") or {})})
    tables = [(f"val loss at equal {unit}", key, unit, val_loss) for key, unit in bases(runs)]
    tables += [(f"held-out {t} bits per byte at equal steps", "step", "steps", text_bpb(t)) for t in texts]
    for title, key, unit, value in tables:
        out += ["", f"**{title}**", "", f"| {unit} " + head, "|---" * len(arms) + "|"]
        for x in quarters(arms, key):
            cells = [cell(*diff(base, rs, lambda r: at(r["log"], key, x, value))) for _, rs in arms[1:]]
            out.append(f"| {x:.4g} | " + " | ".join(cells) + " |")
    return out


def gap_json(arms):
    """Every eval's gap, for a reader's own plots."""
    out = {key: gap(arms, key) for key, _ in bases([r for _, rs in arms for r in rs])}
    texts = sorted({n for r in arms[0][1] for n in (r["log"][-1].get("eval_text") or {})})
    out |= {f"bpb {t} (step)": gap(arms, "step", text_bpb(t)) for t in texts}
    return out


# ----------------------------------------------------------------------------- dynamics per arm

def late_rise(rows, values):
    """Per layer, after the lowest point (the trough that follows the early fall): its step, the
    rise to the highest later point (late peak - trough) and the fall after it (late peak - end).
    A rise then a fall after the trough is the paper's "diversify, then compress"."""
    v = np.array([values(r) for r in rows])  # (measurements, layers)
    steps = [r["step"] for r in rows]
    out = []
    for l, t in enumerate(v.argmin(0)):
        p = t + int(v[t:, l].argmax())
        out.append({"trough_step": steps[t], "late_peak_step": steps[p], "rise": float(v[p, l] - v[t, l]),
                    "fall": float(v[p, l] - v[-1, l])})
    return out


def dynamics_report(arms):
    """Per arm and layer, the mean over seeds of late_rise, for activation effective rank and
    mean head entropy."""
    have = [(n, [r for r in rs if len(r["dyn"]) >= 3]) for n, rs in arms]
    have = [(n, rs) for n, rs in have if rs]
    out = []
    for title, values in (("activation effective rank", lambda row: row["er_act"]),
                          ("mean head entropy (nats)", lambda row: [float(np.mean(h)) for h in row["attn_entropy"]])):
        if not have:
            break
        out += ["", f"## Dynamics over seeds: {title}", "",
                "Per layer, mean over seeds: the step of the lowest point (trough), then the rise to the highest "
                "point after it (late peak − trough) and the fall after that (late peak − end). Both clearly above "
                "0 would be a rise then a fall after the early drop.", "",
                "| layer | " + " | ".join(f"{n}: trough step / rise / fall" for n, _ in have) + " |",
                "|---" * (len(have) + 1) + "|"]
        sums = [[late_rise(r["dyn"], values) for r in rs] for _, rs in have]
        for l in range(len(sums[0][0])):
            mean = lambda s, k: float(np.mean([x[l][k] for x in s]))
            out.append(f"| {l} | " + " | ".join(f"{mean(s, 'trough_step'):.0f} / {mean(s, 'rise'):+.2f} / "
                                                 f"{mean(s, 'fall'):+.2f}" for s in sums) + " |")
    return out


# ----------------------------------------------------------------------------- plots

def arm_plots(arms, out_dir, plt):
    """val_loss.png: per arm its mean over seeds and the band from the lowest to the highest seed,
    against tokens: all of training, and zoomed on its last three quarters, where the arms
    differ. gap.png: each arm minus the first with its 95% band, against steps, tokens, FLOPs."""
    colors = {n: plt.cm.tab10(i) for i, (n, _) in enumerate(arms)}
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    end = min(r["log"][-1]["tokens"] for _, rs in arms for r in rs)
    xs = np.linspace(0, end, 200)
    lows, highs = [], []
    for name, rs in arms:
        v = np.array([[at(r["log"], "tokens", x) for x in xs] for r in rs], dtype=float)  # (seeds, points)
        for ax in axes:
            ax.plot(xs, v.mean(0), color=colors[name], label=f"{name} ({len(rs)} seeds)")
            ax.fill_between(xs, v.min(0), v.max(0), color=colors[name], alpha=0.25, lw=0)
        late = xs >= 0.25 * end
        lows.append(v[:, late].min()), highs.append(v[:, late].max())
    pad = 0.05 * (max(highs) - min(lows))
    axes[1].set_xlim(0.25 * end, end), axes[1].set_ylim(min(lows) - pad, max(highs) + pad)
    axes[0].set_title("all of training"), axes[1].set_title("zoomed: the last three quarters")
    for ax in axes:
        ax.set_xlabel("tokens"), ax.set_ylabel("val loss"), ax.grid(alpha=0.3), ax.legend()
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    files.append(save(fig, out_dir / "val_loss.png"))
    if len(arms) > 1:
        axes_of = bases([r for _, rs in arms for r in rs])
        fig, axes = plt.subplots(1, len(axes_of), figsize=(5 * len(axes_of), 4.2))
        for ax, (key, unit) in zip(axes, axes_of):
            for name, rows in gap(arms, key).items():
                x, m, lo, hi = (np.array(c, dtype=float) for c in zip(*rows))
                ax.plot(x, m, color=colors[name], marker=".", label=f"{name} − {arms[0][0]}")
                ax.fill_between(x, lo, hi, color=colors[name], alpha=0.25, lw=0)
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xlabel(unit), ax.set_ylabel("val loss difference (95% band)"), ax.grid(alpha=0.3), ax.legend()
            ax.set_title(f"at equal {unit}"), ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 4))
        files.append(save(fig, out_dir / "gap.png"))
    return files


def arm_dynamics_plots(arms, out_dir, plt):
    """er_act.png, head_entropy.png: one panel per arm, each layer's mean over the arm's seeds."""
    have = [(n, [r for r in rs if r["dyn"]]) for n, rs in arms]
    have = [(n, rs) for n, rs in have if rs]
    files = []
    for fname, values, ylabel in (("er_act.png", lambda row: row["er_act"], "activation effective rank"),
                                  ("head_entropy.png", lambda row: [np.mean(h) for h in row["attn_entropy"]],
                                   "mean head entropy (nats)")):
        if not have:
            break
        fig, axes = plt.subplots(1, len(have), figsize=(5.5 * len(have), 4), sharey=True, squeeze=False)
        for ax, (name, rs) in zip(axes[0], have):
            n = min(len(r["dyn"]) for r in rs)
            v = np.mean([[values(row) for row in r["dyn"][:n]] for r in rs], axis=0)  # (measurements, layers)
            steps = [row["step"] for row in rs[0]["dyn"][:n]]
            for l in range(v.shape[1]):
                ax.plot(steps, v[:, l], color=plt.cm.viridis(l / max(1, v.shape[1] - 1)), label=f"layer {l}")
            ax.set_title(f"{name} (mean of {len(rs)} seeds)"), ax.set_xlabel("step"), ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, ncol=2, loc="best", framealpha=0.6)
        files.append(save(fig, out_dir / fname))
    return files


def save(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
