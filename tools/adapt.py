"""
The adaptation probe: how fast a checkpoint learns a text it was not trained on. For each budget
of N tokens, fine-tune every weight with AdamW on the text's first N tokens, and score a disjoint
held-out part of the same text at log-spaced steps (0, 1, 2, 4, ... --steps). The learning rate
comes from a small grid (--lrs), chosen per budget on a dev part of the text, the same way for
every checkpoint: no arm gets a tuned advantage.

    python -m tools.adapt --ckpt out/ckpt.pt --text corpus/tinyshakespeare.txt.gz --out adapt.json

The text, as tokens in order: [the largest budget][--dev-tokens][--heldout-tokens]. One JSON per
checkpoint and text: per budget the chosen lr (and each lr's dev loss), the curve (step, tokens,
FLOPs, held-out loss, bits per byte), its area (the mean loss over log2(1 + step), so the early
steps weigh as much as the late ones), and the steps, tokens and FLOPs to reach --target.
Seeded: the same checkpoint and flags give the same curve.
"""
import argparse
import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

import data as datalib
import train
from plumbing import checkpoint, config, heldout
from plumbing.accounting import count_model, flops_per_token
from plumbing.errors import UserError


def parse(argv=None):
    p = argparse.ArgumentParser(prog="adapt.py", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint")
    p.add_argument("--text", required=True, help="the text to learn (.txt, .txt.gz, .jsonl), not in the training data")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--budgets", default="4096,16384,65536", help="training tokens, comma-separated (few-shot to more)")
    p.add_argument("--dev-tokens", type=int, default=8192, help="the part the lr is chosen on")
    p.add_argument("--heldout-tokens", type=int, default=16384, help="the part the curve is scored on")
    p.add_argument("--steps", type=int, default=64, help="fine-tuning steps per budget")
    p.add_argument("--batch-size", type=int, default=8, help="windows per step")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: the checkpoint's)")
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="the AdamW learning rates tried on dev, comma-separated")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (matrices only, as train.py)")
    p.add_argument("--target", type=float, default=None, help="a held-out loss: the steps, tokens and FLOPs to reach it")
    p.add_argument("--max-unk", type=float, default=0.05, help="warn when a trimmed vocabulary maps more than this "
                                                                "share of the text to <unk>")
    p.add_argument("--seed", type=int, default=0, help="seeds the batches")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--text-field", default="text", help="the JSON field of a .jsonl text")
    a = p.parse_args(argv)
    try:
        a.budget_list = sorted({int(float(x)) for x in a.budgets.split(",")})
        a.lr_list = [float(x) for x in a.lrs.split(",")]
    except ValueError:
        raise UserError(f"--budgets {a.budgets!r} / --lrs {a.lrs!r}: give numbers, comma-separated") from None
    for flag, least in (("steps", 1), ("batch_size", 1), ("dev_tokens", 1), ("heldout_tokens", 1)):
        if getattr(a, flag) < least:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(a, flag)}: must be at least {least}")
    if min(a.lr_list) <= 0 or a.budget_list[0] < 1:
        raise UserError("--lrs and --budgets: every value must be > 0")
    return a


def eval_steps(steps):
    """0, 1, 2, 4, ... and the last step."""
    return sorted({0, steps} | {2**k for k in range(int(math.log2(steps)) + 1)})


class Probe:
    """The checkpoint's model, the text cut into its parts, and the fine-tuning loop."""

    def __init__(self, a):
        self.a = a
        self.device = config.hardware(a.device, "float32")[0]
        self.ckpt = checkpoint.load(a.ckpt, fallback=False)
        self.T = a.block_size or self.ckpt["model_args"]["block_size"]
        if not 1 <= self.T <= self.ckpt["model_args"]["block_size"]:
            raise UserError(f"--block-size {self.T}: the checkpoint's model covers 1 to "
                            f"{self.ckpt['model_args']['block_size']} tokens")
        tok = datalib.Tokenizer(self.ckpt["data_meta"], self.ckpt["config"].get("data_dir"), self.ckpt.get("vocab_map"))
        if not Path(a.text).is_file():
            raise UserError(f"--text {a.text}: no such file")
        ids, nbytes = datalib.held_out_text(a.text, tok, a.text_field)
        need = a.budget_list[-1] + a.dev_tokens + a.heldout_tokens
        if len(ids) < need + 1:
            raise UserError(f"--text {a.text} has {len(ids):,} tokens; the largest budget, --dev-tokens and "
                            f"--heldout-tokens need {need + 1:,}: lower them, or give a longer text")
        self.unk_frac = float((ids[:need] == tok.unk).mean()) if tok.unk is not None and tok.old_of_new is not None else 0.0
        if self.unk_frac > a.max_unk:
            print(f"adapt.py: warning: the checkpoint's trimmed vocabulary maps {self.unk_frac:.1%} of {a.text} to <unk> "
                  f"(over --max-unk {a.max_unk:g}); the losses are easier than the text", file=sys.stderr)
        b = a.budget_list[-1]
        self.train = ids[:b]
        self.dev = (ids[b : b + a.dev_tokens + 1], nbytes[b : b + a.dev_tokens + 1])
        h = b + a.dev_tokens
        self.heldout = (ids[h : h + a.heldout_tokens + 1], nbytes[h : h + a.heldout_tokens + 1])
        model = checkpoint.build_model(self.ckpt, self.device)
        self.flops_per_step = flops_per_token(model.args, self.T, non_emb=count_model(model)[1]) * a.batch_size * self.T
        self.start = self.score(model, self.heldout)  # step 0 of every curve: the checkpoint itself

    def score(self, model, part):
        """(loss, bits per byte) over every window of the part (stride T), as train.py --eval-text scores."""
        every = argparse.Namespace(block_size=self.T, batch_size=64, eval_batches=len(part[0]))
        r = heldout.text_loss(model, part, None, every, self.device, nullcontext())
        return r["loss"], r["bpb"]

    def finetune(self, budget, lr, at):
        """AdamW on the first `budget` tokens for --steps steps, from the checkpoint: the dev part's
        loss at the last step, and the held-out part's (loss, bpb) at each step in `at`."""
        a = self.a
        torch.manual_seed(a.seed)
        model = checkpoint.build_model(self.ckpt, self.device)
        opt = train.adamw(list(model.parameters()), lr, a.weight_decay)  # pretraining's AdamW
        tokens = self.train[:budget]
        if len(tokens) <= self.T + 1:
            raise UserError(f"--budgets {budget}: a budget needs more than --block-size + 1 = {self.T + 1} tokens")
        out = {}
        for step in range(a.steps + 1):
            if step in at:
                out[step] = self.start if step == 0 else self.score(model, self.heldout)
            if step == a.steps:
                break
            x, y = datalib.get_batch(tokens, a.batch_size, self.T, a.seed, budget, step, self.device)
            model(x, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return self.score(model, self.dev)[0], out

    def budget(self, n):
        a = self.a
        steps = eval_steps(a.steps)
        # one run per lr scores both parts: the lr is chosen on dev alone, and the chosen run's
        # held-out curve is the one a second run at that lr would give (same seed, same batches)
        runs = {lr: self.finetune(n, lr, set(steps)) for lr in a.lr_list}
        dev = {lr: d for lr, (d, _) in runs.items()}
        lr = min(a.lr_list, key=lambda x: (dev[x], x))  # the lowest dev loss; a tie goes to the smaller lr
        scored = runs[lr][1]
        curve = [{"step": s, "tokens": s * a.batch_size * self.T, "flops": s * self.flops_per_step,
                  "loss": scored[s][0], "bpb": scored[s][1]} for s in steps]
        x = np.log2(1 + np.array(steps))
        losses = np.array([c["loss"] for c in curve])
        area = float(((losses[1:] + losses[:-1]) / 2 * np.diff(x)).sum() / (x[-1] - x[0]))  # trapezoids
        reach = next((c for c in curve if a.target is not None and c["loss"] <= a.target), None)
        return {"lr": lr, "dev_loss": {f"{k:g}": v for k, v in dev.items()}, "curve": curve, "area": area,
                "to_target": None if reach is None else {k: reach[k] for k in ("step", "tokens", "flops")}}


# ----------------------------------------------------------------------------- reading the files (tools/compare.py --adapt)

def figures(sets):
    """{figure: {run dir: value}} from adaptation files ({label: {run dir: this tool's JSON}}): per
    text and budget, the curve's area, its drop, the steps to --target, and the held-out loss at each step."""
    figs = {}
    for label, by_dir in sets.items():
        budgets = sorted({int(n) for r in by_dir.values() for n in r["budgets"]})
        for n in budgets:
            name = f"adapt {label}, {n:,} tokens"
            runs = {d: r["budgets"].get(str(n)) for d, r in by_dir.items()}
            figs[f"{name}: area (mean loss over log steps)"] = {d: b and b["area"] for d, b in runs.items()}
            # what fine-tuning learned, whatever the start: an arm that starts worse can still learn faster
            figs[f"{name}: drop (loss at step 0 minus at the last)"] = {
                d: b and b["curve"][0]["loss"] - b["curve"][-1]["loss"] for d, b in runs.items()}
            if any(r.get("target") is not None for r in by_dir.values()):
                figs[f"{name}: steps to loss {next(iter(by_dir.values()))['target']}"] = {
                    d: b and (b["to_target"] or {}).get("step") for d, b in runs.items()}
            # every lr of the grid at the last step, on dev: how an arm fares away from its best lr
            for lr in sorted({k for b in runs.values() if b for k in b.get("dev_loss", {})}, key=float):
                figs[f"{name}: dev loss at the last step, lr {lr}"] = {
                    d: b and b.get("dev_loss", {}).get(lr) for d, b in runs.items()}
            steps = sorted({c["step"] for b in runs.values() if b for c in b["curve"]})
            for s in steps:
                figs[f"{name}: loss at step {s}"] = {
                    d: b and next((c["loss"] for c in b["curve"] if c["step"] == s), None) for d, b in runs.items()}
    return figs


def report(arms, sets):
    """The adaptation tables of an arms report: mean ± sd per arm, and each arm minus the first,
    paired by seed, with its 95% t interval."""
    from tools.arms import cell, diff, mean_sd
    base_name, base = arms[0]
    out = ["## Adaptation to unseen text (tools/adapt.py)", "",
           "Fine-tuning every weight on the first N tokens of each text; held-out loss. Mean ± sd over seeds; "
           f"the difference to `{base_name}` paired by seed, with its 95% t interval.", "",
           "| figure | " + " | ".join(n for n, _ in arms) + " | " + " | ".join(f"{n} − {base_name}" for n, _ in arms[1:])
           + " |", "|---" * (2 * len(arms)) + "|"]
    for fig, vals in figures(sets).items():
        cells = [mean_sd([vals.get(r["dir"]) for r in rs]) for _, rs in arms]
        cells += [cell(*diff(base, rs, lambda r: vals.get(r["dir"]))) for _, rs in arms[1:]]
        out.append(f"| {fig} | " + " | ".join(cells) + " |")
    return out + (equal_flops_report(arms, sets) if len(arms) > 1 else [])


def equal_flops_report(arms, sets):
    """Each arm against the first at equal total FLOPs, pretraining and fine-tuning together: per
    seed, both runs' held-out loss where the smaller of their two totals at the last fine-tuning step
    falls on each curve. A run that pretrained on fewer FLOPs gets that many more fine-tuning steps."""
    from tools.arms import at, cell, mean_sd, paired, seed
    base_name, base = arms[0]
    base_of = {seed(b): b for b in base}
    runs = [r for _, rs in arms for r in rs]
    out = ["", "At equal total FLOPs (pretraining + fine-tuning): each arm's held-out loss minus the "
           f"`{base_name}` run of its seed, both read where the smaller of their totals at the last fine-tuning step "
           "falls on their curves (linear between the logged steps; '-' where the totals differ by more than the curve "
           "spans). The first row is the pretraining FLOPs at the checkpoints. An arm that pretrained on fewer FLOPs "
           "spends them here on more fine-tuning steps; the rows 'of which those steps' give what the same steps are "
           f"worth to `{base_name}`, so the equal-FLOPs difference is the last-step difference plus that.", "",
           "| figure | " + " | ".join(f"{n} − {base_name}" for n, _ in arms[1:]) + " |", "|---" * len(arms) + "|"]
    # the pretraining FLOPs at the checkpoint's step (any text's file names it), from the run's log
    step = {r["dir"]: next((by_dir[r["dir"]].get("step") for by_dir in sets.values() if r["dir"] in by_dir), None)
            for r in runs}
    start = {r["dir"]: at(r["log"], "step", step[r["dir"]], lambda row: row.get("flops"))
             if step[r["dir"]] is not None else None for r in runs}
    cells = [cell(*paired({seed(r): start[r["dir"]] for r in base}, {seed(r): start[r["dir"]] for r in rs}))
             for _, rs in arms[1:]]
    out.append(f"| pretraining FLOPs (base: {mean_sd([start[r['dir']] for r in base])}) | " + " | ".join(cells) + " |")
    for label, by_dir in sets.items():
        for n in sorted({int(k) for r in by_dir.values() for k in r["budgets"]}):
            cells, steps_worth = [], []
            for _, rs in arms[1:]:
                mine, theirs, own = {}, {}, {}
                for r in rs:
                    b = base_of.get(seed(r))
                    if b is None or r["dir"] not in by_dir or b["dir"] not in by_dir:
                        continue
                    fr, fb = by_dir[r["dir"]], by_dir[b["dir"]]
                    if None in (start[r["dir"]], start[b["dir"]]) or str(n) not in fr["budgets"] or str(n) not in fb["budgets"]:
                        continue
                    cr, cb = fr["budgets"][str(n)]["curve"], fb["budgets"][str(n)]["curve"]
                    total = min(start[r["dir"]] + cr[-1]["flops"], start[b["dir"]] + cb[-1]["flops"])
                    # each curve's fine-tuning FLOPs at that total, linear between its logged steps
                    loss = lambda c: c["loss"]
                    mine[seed(r)] = at(cr, "flops", total - start[r["dir"]], loss)
                    theirs[seed(r)] = at(cb, "flops", total - start[b["dir"]], loss)
                    own[seed(r)] = cb[-1]["loss"]
                cells.append(cell(*paired(theirs, mine)))
                steps_worth.append(cell(*paired(theirs, own)))
            out.append(f"| adapt {label}, {n:,} tokens: loss at equal total FLOPs | " + " | ".join(cells) + " |")
            # the equal-FLOPs difference is the last-step difference plus this: what the fine-tuning
            # steps the cheaper pretraining paid for would have bought the first arm itself
            out.append(f"| adapt {label}, {n:,} tokens: of which those steps, on `{base_name}`'s own curve "
                       f"(its last step minus its equal-FLOPs point) | " + " | ".join(steps_worth) + " |")
    return out


def plots(arms, sets, out_dir, plt):
    """adapt_LABEL.png per text: held-out loss against fine-tuning steps, a panel per budget, one
    colour per arm (its mean over seeds, and the band from the lowest to the highest seed)."""
    from tools.arms import save
    colors = {n: plt.cm.tab10(i) for i, (n, _) in enumerate(arms)}
    files = []
    for label, by_dir in sets.items():
        budgets = sorted({int(n) for r in by_dir.values() for n in r["budgets"]})
        fig, axes = plt.subplots(1, len(budgets), figsize=(4.5 * len(budgets), 3.8), squeeze=False, sharey=True)
        for ax, n in zip(axes[0], budgets):
            for name, rs in arms:
                curves = [by_dir[r["dir"]]["budgets"][str(n)]["curve"] for r in rs if r["dir"] in by_dir]
                if not curves:
                    continue
                x = [c["step"] for c in curves[0]]
                v = np.array([[c["loss"] for c in cv] for cv in curves])  # (seeds, steps)
                ax.plot(x, v.mean(0), marker=".", color=colors[name], label=f"{name} ({len(curves)})")
                ax.fill_between(x, v.min(0), v.max(0), color=colors[name], alpha=0.25, lw=0)
            ax.set_xscale("symlog", linthresh=1), ax.set_title(f"{label}: {n:,} tokens"), ax.grid(alpha=0.3)
            ax.set_xlabel("fine-tuning step"), ax.set_ylabel("held-out loss")
        axes[0][-1].legend()
        files.append(save(fig, Path(out_dir) / f"adapt_{label}.png"))
    return files


def main(argv=None):
    try:
        a = parse(argv)
        probe = Probe(a)
        result = {"ckpt": str(a.ckpt), "step": probe.ckpt["step"], "config": probe.ckpt["config"], "text": str(a.text),
                  "unk_frac": probe.unk_frac, "block_size": probe.T, "batch_size": a.batch_size, "steps": a.steps,
                  "lrs": a.lr_list, "target": a.target, "seed": a.seed, "dev_tokens": a.dev_tokens,
                  "heldout_tokens": a.heldout_tokens, "flops_per_step": probe.flops_per_step, "budgets": {}}
        for n in a.budget_list:
            r = result["budgets"][str(n)] = probe.budget(n)
            print(f"budget {n:,} tokens: lr {r['lr']:g}; held-out loss {r['curve'][0]['loss']:.4f} -> "
                  f"{r['curve'][-1]['loss']:.4f} in {a.steps} steps; area {r['area']:.4f}", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        datalib.write_atomic(Path(a.out), lambda f: f.write(json.dumps(result, indent=1, default=str).encode()))
        print(f"wrote {a.out}")
    except UserError as e:
        sys.exit(f"adapt.py: error: {e}")


if __name__ == "__main__":
    main()
