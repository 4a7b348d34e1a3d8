"""tools/compare.py and tools/arms.py on synthetic logs: interpolation, 'not reached', speedups, refusals, arms
over seeds and the gap over training."""
import json

import numpy as np
import pytest

from tools import arms as armslib
from tools import compare


def write_run(d, losses, flops_per_step=1e9, data_sha="abc", dynamics=None, step_every=10):
    d.mkdir(parents=True)
    with open(d / "log.jsonl", "w") as f:
        for i, v in enumerate(losses):
            s = i * step_every
            f.write(json.dumps({"step": s, "tokens": s * 100, "flops": s * flops_per_step, "elapsed_s": s * 0.5,
                                "val_loss": v, "episode_acc_before": 0.1, "episode_acc_after": 0.2}) + "\n")
    meta = {"encoding": "cl100k_base", "vocab_size": 8192, "sources": [{"path": "x", "sha256": data_sha}]}
    (d / "run.json").write_text(json.dumps({"data_meta": meta}))
    if dynamics:
        with open(d / "dynamics.jsonl", "w") as f:
            for step, er, ent in dynamics:
                f.write(json.dumps({"step": step, "er_act": er, "attn_entropy": ent}) + "\n")
    return d


def test_crossing_interpolates_between_evals():
    log = [{"step": 0, "tokens": 0, "flops": 0, "elapsed_s": 0, "val_loss": 8.0},
           {"step": 10, "tokens": 1000, "flops": 10.0, "elapsed_s": 5, "val_loss": 6.0},
           {"step": 20, "tokens": 2000, "flops": 20.0, "elapsed_s": 10, "val_loss": 5.0}]
    c = compare.crossing(log, 5.5)
    assert c == {"step": 15.0, "tokens": 1500.0, "flops": 15.0, "elapsed_s": 7.5}
    assert compare.crossing(log, 6.0)["step"] == 10
    assert compare.crossing(log, 9.0)["step"] == 0
    assert compare.crossing(log, 4.9) is None  # never extrapolated


def test_speedup_arithmetic_and_not_reached(tmp_path):
    van = write_run(tmp_path / "vanilla", [8, 7, 6, 5, 4.5])  # reaches 5.0 at step 30
    met = write_run(tmp_path / "meta", [8, 6, 5, 4.8, 4.7], flops_per_step=1.5e9)  # 5.0 at step 20
    summary = compare.main([str(van), str(met), "--targets", "5.0,4.6", "--out", str(tmp_path / "r" / "report.md")])
    s_steps, s_flops = summary[(5.0, "meta")]
    assert s_steps == pytest.approx(30 / 20) and s_flops == pytest.approx(30e9 / 30e9)
    assert summary[(4.6, "meta")] == (None, None)
    text = (tmp_path / "r" / "report.md").read_text()
    assert "not reached" in text and "1.50x" in text
    assert "| vanilla | 40 | 4.5000 | 90.0 |" in text


def test_default_targets_are_crossed_by_every_run(tmp_path):
    runs = [compare.load_run(write_run(tmp_path / "a", [9, 7, 5, 4])), compare.load_run(write_run(tmp_path / "b", [9, 6.5, 5.5, 4.5]))]
    targets = compare.default_targets(runs)
    assert len(targets) == 3 and max(targets) < 6.5 and min(targets) >= 4.5
    assert all(compare.crossing(r["log"], t) for r in runs for t in targets)


def test_runs_without_dynamics_or_ner_still_compare_and_with_them_summarise(tmp_path):
    dyn = [(0, [2.0, 3.0], [[1.0, 1.0], [2.0, 2.0]]), (10, [5.0, 4.0], [[1.5, 1.5], [2.5, 2.5]]), (20, [3.0, 3.5], [[1.2, 1.2], [2.0, 2.0]])]
    a = write_run(tmp_path / "a", [8, 7, 6], dynamics=dyn)
    b = write_run(tmp_path / "b", [8, 6.5, 6])
    ner = []
    for name, f1 in (("a", 0.5), ("b", 0.53)):
        p = tmp_path / f"r_{name}.json"
        p.write_text(json.dumps({"results": {"da_ddt": {"f1": f1}}, "avg_f1": f1}))
        ner.append(str(p))
    compare.main([str(a), str(b), "--out", str(tmp_path / "plain.md")])
    compare.main([str(a), str(b), "--ner", ",".join(ner), "--out", str(tmp_path / "full.md")])
    text = (tmp_path / "full.md").read_text()
    assert "| da_ddt | 50.00 | 53.00 | +3.00 |" in text
    assert "| 0 | 10 / +3.00 / +2.00 | 20 / +0.00 |" in text  # layer 0 ER: 2 -> 5 (peak) -> 3
    assert "| 1 | 10 / +0.50 / +0.50 | 20 / +0.00 |" in text  # layer 1 entropy: 2.0 -> 2.5 -> 2.0
    summary = compare.dyn_summary([{"step": s, "er_act": e} for s, e, _ in dyn], lambda r: r["er_act"])
    assert summary[1] == {"peak_step": 10, "rise": 1.0, "fall": 0.5, "trough_step": 20, "rebound": 0.0}
    dip = [{"step": s, "er_act": [v]} for s, v in ((0, 9.0), (10, 2.0), (20, 5.0))]  # fall first, then rise
    assert compare.dyn_summary(dip, lambda r: r["er_act"])[0] == {
        "peak_step": 0, "rise": 0.0, "fall": 4.0, "trough_step": 10, "rebound": 3.0}


def test_refusals(tmp_path):
    a = write_run(tmp_path / "a", [8, 7])
    b = write_run(tmp_path / "b", [8, 7], data_sha="different")
    with pytest.raises(SystemExit, match="different data"):
        compare.main([str(a), str(b), "--out", str(tmp_path / "r.md")])
    with pytest.raises(SystemExit, match="no log.jsonl"):
        compare.main([str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "r.md")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no evaluations logged"):
        compare.main([str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")])
    with pytest.raises(SystemExit, match="--ner: 1 files for 2 runs"):
        compare.main([str(a), str(a), "--ner", "x.json", "--out", str(tmp_path / "r.md")])


def test_final_table_shows_what_the_inner_loop_bought_and_the_meta_loss(tmp_path):
    a = write_run(tmp_path / "a", [8, 6], dynamics=[(0, [5.0, 7.0], [[1.0]]), (10, [4.0, 3.5], [[1.0]])])
    rows = [json.loads(line) for line in open(a / "log.jsonl")]
    rows[-1] |= {"episode_loss_before": 1.0, "episode_loss_after": 0.75, "meta_loss": 0.9}
    (a / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare.main([str(a), "--out", str(tmp_path / "r.md")])
    final = next(line for line in (tmp_path / "r.md").read_text().splitlines() if line.startswith("| a |"))
    assert "0.100 -> 0.200 (+0.100)" in final and "1.000 -> 0.750 (-0.250)" in final
    assert final.endswith("| 0.900 | 3.5 |")  # meta loss, then the last layer's activation ER at the last row


def test_learned_inner_step_sizes_are_reported_per_layer(tmp_path):
    a = write_run(tmp_path / "a", [8, 6])
    rows = [json.loads(line) for line in open(a / "log.jsonl")]
    rows[0]["inner_lrs"] = {"layers.0.attn.q.weight": 0.1, "layers.0.mlp.w1.weight": 0.1, "head.w": 0.1}
    rows[-1]["inner_lrs"] = {"layers.0.attn.q.weight": 0.4, "layers.0.mlp.w1.weight": 0.1, "head.w": 2.0}
    (a / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare.main([str(a), "--out", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert "`a` (started at 0.1)" in text
    assert "| block 0 | 2 | 0.2 | 0.1 (mlp.w1) | 0.4 (attn.q) |" in text  # geometric mean of 0.4 and 0.1
    assert "| head | 1 | 2 | 2 (w) | 2 (w) |" in text


def write_seed_run(d, seed, final, acc_after, meta=False, task="smlmt", flops=1e12):
    """Two evals; the config differs between arms only in --meta, within an arm only in the seed."""
    d.mkdir(parents=True)
    rows = [{"step": 0, "tokens": 0, "flops": 0, "elapsed_s": 0, "val_loss": 9.0, "episode_acc_after": 0.3},
            {"step": 100, "tokens": 1000, "flops": flops, "elapsed_s": 50, "val_loss": final, "episode_acc_after": acc_after,
             "eval_text": {"held": {"loss": final + 1, "bpb": final / 4, "unk_frac": 0.01}}}]
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta_d = {"encoding": "cl100k_base", "vocab_size": 8192, "sources": [{"path": "x", "sha256": "abc"}]}
    (d / "run.json").write_text(json.dumps({"data_meta": meta_d, "config": {
        "seed": seed, "out_dir": str(d), "meta": meta, "task": task, "lr": 2e-3}}))
    return d


def test_arms_report_means_sds_and_paired_t_intervals(tmp_path):
    van = [write_seed_run(tmp_path / f"vanilla-s{s}", s, v, 0.5) for s, v in ((1, 5.0), (2, 5.1), (3, 5.2))]
    met = [write_seed_run(tmp_path / f"meta-s{s}", s, v, acc, meta=True)
           for s, v, acc in ((3, 5.0, 0.62), (1, 4.9, 0.60), (2, 5.05, 0.61))]  # listed out of seed order
    out = tmp_path / "r" / "report.md"
    compare.main([*map(str, van + met), "--targets", "6.0", "--out", str(out)])
    text = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "| figure | vanilla (3 seeds) | meta (3 seeds) | meta − vanilla |" in text
    # paired by seed: differences -0.1, -0.05, -0.2 -> mean -0.11667, sd 0.076376, half 4.303 * sd / sqrt(3) = 0.18974
    assert rows["val loss at equal steps (100)"].endswith(
        "| 5.1 ± 0.1 | 4.983 ± 0.076 | -0.1167 [-0.306, +0.0731] not significant |")
    # +0.10, +0.11, +0.12 -> mean 0.11, sd 0.01, half 0.024843: the interval excludes 0
    acc = rows["val smlmt episodes acc after the inner loop"]
    assert acc.endswith("| +0.11 [+0.0852, +0.135] |") and "not significant" not in acc
    assert "meta − vanilla, val smlmt episodes acc after the inner loop: +0.11, 95% CI [+0.0852, +0.135]: significant" in text
    assert "held-out held bpb" in rows and "val loss at equal FLOPs (1e+12)" in rows


def test_episodes_of_other_tasks_are_not_compared_and_identical_runs_say_so(tmp_path):
    """A pico arm's val episodes are another test than vanilla's SMLMT episodes: its accuracy gets
    a row of its own with no difference. A run that equals its baseline seed for seed (a meta run
    before --meta-start) reads 'identical', not an interval of width 0."""
    van = [write_seed_run(tmp_path / f"vanilla-s{s}", s, 5.0 + s / 10, 0.5) for s in (1, 2)]
    pico = [write_seed_run(tmp_path / f"pico-s{s}", s, 5.0 + s / 10, 0.8, meta=True, task="pico") for s in (1, 2)]
    out = tmp_path / "report.md"
    compare.main([*map(str, van + pico), "--targets", "6.0", "--out", str(out)])
    text = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["val smlmt episodes acc after the inner loop"].endswith("| 0.5 ± 0 | - | - |")
    assert rows["val pico episodes acc after the inner loop"].endswith("| - | 0.8 ± 0 | - |")
    assert rows["val loss at equal steps (100)"].endswith("| 0 (identical) |")
    assert "pico − vanilla, val loss at equal steps (100): identical in every seed" in text


def test_one_seed_per_arm_says_no_interval(tmp_path):
    a = write_seed_run(tmp_path / "vanilla", 1, 5.0, 0.5)
    b = write_seed_run(tmp_path / "meta", 1, 4.9, 0.6, meta=True)
    out = tmp_path / "report.md"
    compare.main(["--arm", f"vanilla={a}", "--arm", f"meta={b}", "--targets", "6.0", "--out", str(out)])
    assert "-0.1 (1 seed: no interval)" in out.read_text()
    with pytest.raises(SystemExit, match="NAME=DIR"):
        compare.main(["--arm", str(a), "--out", str(out)])


def test_held_out_text_has_its_own_table(tmp_path):
    a = write_seed_run(tmp_path / "vanilla", 1, 5.0, 0.5)
    out = tmp_path / "report.md"
    compare.main([str(a), "--targets", "6.0", "--out", str(out)])
    assert "| vanilla | 6.0000 / 1.2500 / " in out.read_text()


def write_curve(d, seed, losses, meta=False, tokens_per_step=1000, bpb=None, lm_steps=None):
    """An eval every 100 steps; a meta arm may count other tokens per step, and fewer LM steps."""
    d.mkdir(parents=True)
    rows = [{"step": 100 * i, "tokens": 100 * i * tokens_per_step, "flops": 100 * i * tokens_per_step * 1e6,
             "elapsed_s": i, "val_loss": v, "lm_steps": (lm_steps or [100 * j for j in range(len(losses))])[i]}
            | ({"eval_text": {"held": {"loss": v, "bpb": bpb[i], "unk_frac": 0}}} if bpb else {})
            for i, v in enumerate(losses)]
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta_d = {"encoding": "cl100k_base", "vocab_size": 8192, "sources": [{"path": "x", "sha256": "abc"}]}
    (d / "run.json").write_text(json.dumps({"data_meta": meta_d, "config": {"seed": seed, "out_dir": str(d), "meta": meta}}))
    return d


def test_the_gap_over_training_is_the_paired_difference_at_every_eval(tmp_path):
    base = [9.0, 6.0, 5.5, 5.2, 5.0]
    gaps = {1: [0, 0.3, 0.2, 0.1, 0.0], 2: [0, 0.5, 0.2, 0.2, 0.1], 3: [0, 0.4, 0.2, 0.15, 0.05]}  # the meta arm's excess
    van = [write_curve(tmp_path / f"vanilla-s{s}", s, [v + 0.01 * s for v in base], bpb=[2.0] * 5) for s in gaps]
    met = [write_curve(tmp_path / f"meta-s{s}", s, [v + 0.01 * s + g for v, g in zip(base, gaps[s])], meta=True,
                       tokens_per_step=2000, bpb=[2.0 + g for g in gaps[s]], lm_steps=[0, 100, 200, 250, 300])
           for s in gaps]
    out = tmp_path / "r" / "report.md"
    compare.main([*map(str, van + met), "--targets", "6.0", "--out", str(out)])
    text = out.read_text()
    arms = compare.group_arms([compare.load_run(d) for d in van + met])
    by_step = armslib.gap(arms, "step")["meta"]
    assert [x for x, *_ in by_step] == [0, 100, 200, 300, 400]
    for (x, m, lo, hi), i in zip(by_step, range(5)):
        d = [gaps[s][i] for s in gaps]
        half = 4.303 * np.std(d, ddof=1) / np.sqrt(3)
        assert m == pytest.approx(np.mean(d)) and (lo, hi) == pytest.approx((m - half, m + half))
    # equal tokens: the meta runs count 2000 tokens a step, so at vanilla's 400k tokens (step 400) they are at step 200
    by_tokens = dict((x, m) for x, m, *_ in armslib.gap(arms, "tokens")["meta"])
    assert set(by_tokens) == {0, 100_000, 200_000, 300_000, 400_000}  # vanilla's evals within what every run reached
    assert by_tokens[400_000] == pytest.approx(np.mean([5.5 + gaps[s][2] - 5.0 for s in gaps]))
    # the quarter-point tables: a quarter, half, three quarters and all of the 400 steps
    rows = text.split("**val loss at equal steps**")[1].split("\n\n")[1].splitlines()[2:]  # the table's data rows
    assert [r.split(" | ")[0] for r in rows] == ["| 100", "| 200", "| 300", "| 400"]
    assert rows[1] == "| 200 | +0.2 [+0.2, +0.2] |"  # every seed 0.2 behind: a zero-width interval
    assert "not significant" in rows[3]  # 0.0, 0.1, 0.05: the interval spans 0
    assert "**held-out held bits per byte at equal steps**" in text
    # equal LM steps: the meta runs took 300 LM steps in 400; against vanilla's step 300 their step 400 counts
    by_lm = dict((x, m) for x, m, *_ in armslib.gap(arms, "lm_steps")["meta"])
    assert max(by_lm) == 300 and by_lm[300] == pytest.approx(np.mean([5.0 + gaps[s][4] - 5.2 for s in gaps]))
    assert "**val loss at equal LM steps**" in text
    assert set(json.loads((out.parent / "gap.json").read_text())) == {"step", "tokens", "flops", "lm_steps",
                                                                      "bpb held (step)"}


def test_ner_sets_get_a_labelled_row_each(tmp_path):
    runs = [write_seed_run(tmp_path / f"{arm}-s{s}", s, 5.0, 0.5, meta=arm == "meta") for arm in ("vanilla", "meta")
            for s in (1, 2)]
    specs = []
    for label, f1 in (("head@600", [0.1, 0.2, 0.3, 0.5]), ("full", [0.4, 0.5, 0.42, 0.53]), ("some", [0.4, None, 0.5, 0.6])):
        files = []
        for r, f in zip(runs, f1):
            p = tmp_path / f"{label}_{r.name}.json"
            p.write_text(json.dumps({"results": {"da_ddt": {"f1": f}}, "avg_f1": f}))
            files.append(str(p) if f is not None else "-")  # "-": no file for that run
        specs += ["--ner", f"{label}=" + ",".join(files)]
    out = tmp_path / "report.md"
    compare.main([*map(str, runs), *specs, "--targets", "6.0", "--out", str(out)])
    rows = {line.split(" | ")[0].strip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert rows["UNER average F1 (%) head@600"].endswith("| +25 [-38.5, +88.5] not significant |")  # +20, +30
    assert rows["UNER average F1 (%) full"].startswith("| UNER average F1 (%) full | 45 ± 7.1 | 47.5 ± 7.8 |")
    assert "## Universal NER F1 (%) — full" in out.read_text()
    assert rows["UNER average F1 (%) some"].endswith("| +10 (1 seed: no interval) |")  # seed 1 pairs; seed 2 has no vanilla file


def test_late_rise_finds_a_rise_then_a_fall_after_the_trough():
    rows = [{"step": s, "er_act": [v, w]} for s, v, w in ((0, 9, 9), (100, 3, 4), (200, 6, 3), (300, 4, 2))]
    first, second = armslib.late_rise(rows, lambda r: r["er_act"])
    assert first == {"trough_step": 100, "late_peak_step": 200, "rise": 3.0, "fall": 2.0}  # fell, rose, fell again
    assert second == {"trough_step": 300, "late_peak_step": 300, "rise": 0.0, "fall": 0.0}  # only ever fell


def write_adapt(path, seed_shift, target=None, last=4.0):
    """A tools/adapt.py file: one budget, a curve over steps 0, 1, 2, 4 shifted by seed_shift."""
    curve = [{"step": s, "tokens": s * 256, "flops": s * 1e9, "loss": v + seed_shift, "bpb": (v + seed_shift) / 2}
             for s, v in ((0, 5.0), (1, 4.6), (2, 4.3), (4, last))]
    to = next(({k: c[k] for k in ("step", "tokens", "flops")} for c in curve if target and c["loss"] <= target), None)
    path.write_text(json.dumps({"text": "/x/tinystories.txt", "target": target, "step": 100, "flops_per_step": 1e9, "budgets": {
        "4096": {"lr": 1e-3, "dev_loss": {"0.001": last + seed_shift, "0.003": 6.0 - 2 * seed_shift}, "curve": curve, "area": float(np.mean([c["loss"] for c in curve])), "to_target": to}}}))
    return str(path)


def test_adaptation_files_get_paired_intervals_per_text_budget_and_step(tmp_path):
    van = [write_seed_run(tmp_path / f"vanilla-s{s}", s, 5.0, 0.5) for s in (1, 2, 3)]
    met = [write_seed_run(tmp_path / f"meta-s{s}", s, 5.0, 0.6, meta=True) for s in (1, 2, 3)]
    # paired by seed, meta - vanilla at steps 0-2: -0.10, -0.12, -0.14 (mean -0.12, sd 0.02, half 0.049683)
    files = [write_adapt(tmp_path / f"a{i}.json", shift, target=4.35, last=4.0 - (i >= 3) * 0.3)
             for i, shift in enumerate((0.0, 0.1, 0.2, -0.1, -0.02, 0.06))]
    out = tmp_path / "r" / "report.md"
    compare.main([*map(str, van + met), "--targets", "6.0", "--adapt", ",".join(files), "--out", str(out)])
    text = out.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| adapt")}
    assert "## Adaptation to unseen text" in text
    assert rows["adapt tinystories, 4,096 tokens: loss at step 2"].endswith("| -0.12 [-0.17, -0.0703] |")
    assert rows["adapt tinystories, 4,096 tokens: area (mean loss over log steps)"].endswith("| -0.195 [-0.245, -0.145] |")
    # meta's last step is 0.3 lower on every seed: it learned 1.3 where vanilla learned 1.0
    drop = rows["adapt tinystories, 4,096 tokens: drop (loss at step 0 minus at the last)"]
    assert "| 1 ± 0 | 1.3 ± " in drop and drop.endswith("| +0.3 [+0.3, +0.3] |")
    # each lr of the grid on dev, paired: at 3e-3 meta minus vanilla is -2 x the shift difference (+0.2, +0.24, +0.28)
    assert rows["adapt tinystories, 4,096 tokens: dev loss at the last step, lr 0.003"].endswith("| +0.24 [+0.141, +0.339] |")
    # vanilla reaches 4.35 at steps 2, 4, 4; meta at 2, 2, 4
    assert "| adapt tinystories, 4,096 tokens: steps to loss 4.35 | 3.333 ± 1.2 | 2.667 ± 1.2 |" in text
    with pytest.raises(SystemExit, match="--adapt: 2 files for 6 runs"):
        compare.main([*map(str, van + met), "--adapt", ",".join(files[:2]), "--out", str(out)])


def test_equal_total_flops_gives_the_cheaper_pretraining_more_fine_tuning_steps(tmp_path):
    van = [write_seed_run(tmp_path / f"vanilla-s{s}", s, 5.0, 0.5) for s in (1, 2, 3)]
    # meta pretrained on 2 fine-tuning steps' FLOPs fewer (1e9 each): its last step (4) is vanilla's step 2
    met = [write_seed_run(tmp_path / f"meta-s{s}", s, 5.0, 0.6, meta=True, flops=1e12 - 2e9) for s in (1, 2, 3)]
    files = [write_adapt(tmp_path / f"a{i}.json", shift, last=4.0 - (i >= 3) * 0.3)
             for i, shift in enumerate((0.0, 0.1, 0.2, -0.1, -0.02, 0.06))]
    out = tmp_path / "r" / "report.md"
    compare.main([*map(str, van + met), "--targets", "6.0", "--adapt", ",".join(files), "--out", str(out)])
    rows = {line.split(" | ")[0].strip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    # per seed 3.7 + meta shift - (4.3 + vanilla shift): -0.70, -0.72, -0.74
    assert rows["adapt tinystories, 4,096 tokens: loss at equal total FLOPs"].endswith("| -0.72 [-0.77, -0.67] |")
    # of which vanilla's own steps 2 -> 4: 4.0 - 4.3 on every seed (the last-step difference is -0.42)
    assert rows["adapt tinystories, 4,096 tokens: of which those steps, on `vanilla`'s own curve (its last step minus "
                "its equal-FLOPs point)"].endswith("| -0.3 [-0.3, -0.3] |")
    assert rows["pretraining FLOPs (base: 1e+12 ± 0)"].endswith("| -2e+09 [-2e+09, -2e+09] |")
    # 5 steps cheaper: meta's last step (total 1e12 - 1e9) comes before vanilla finished pretraining
    far = [write_seed_run(tmp_path / f"far-s{s}", s, 5.0, 0.6, meta=True, flops=1e12 - 5e9) for s in (1, 2, 3)]
    compare.main([*map(str, van + far), "--targets", "6.0", "--adapt", ",".join(files), "--out", str(out)])
    assert "| adapt tinystories, 4,096 tokens: loss at equal total FLOPs | - |" in out.read_text()
