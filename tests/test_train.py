"""train.py: determinism, resume, the log's contract, and the errors a user sees."""
import argparse

import pytest
import torch
from conftest import TINY, run_train
from torch.utils._python_dispatch import TorchDispatchMode

import train
from plumbing import config

LOSSES = ("train_loss", "val_loss")
LOG_FIELDS = {"step", "tokens", "flops", "elapsed_s", "train_loss", "val_loss", "lr", "ar_ms",
              "episode_acc_before", "episode_acc_after"}


def test_same_seed_same_losses_and_a_different_seed_differs(data_dir, tmp_path):
    a = run_train(data_dir, tmp_path / "a", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0)
    b = run_train(data_dir, tmp_path / "b", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0)
    c = run_train(data_dir, tmp_path / "c", "--max-steps", 6, "--eval-every", 3, "--dynamics-every", 0, "--seed", 7)
    assert [[r[k] for k in LOSSES] for r in a] == [[r[k] for k in LOSSES] for r in b]
    assert a[-1]["train_loss"] != c[-1]["train_loss"]


def test_log_rows_have_the_documented_fields(data_dir, tmp_path):
    rows = run_train(data_dir, tmp_path, "--max-steps", 6, "--eval-every", 3)
    assert [r["step"] for r in rows] == [0, 3, 6]
    for r in rows:
        assert LOG_FIELDS <= set(r)
    assert rows[-1]["tokens"] == 6 * 4 * 32
    assert rows[-1]["flops"] > rows[1]["flops"] > 0 and rows[-1]["ar_ms"] > 0
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]  # it learns something in 6 steps
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert {"model", "optimizer", "model_args", "step", "rng", "state", "config", "data_meta"} <= set(ckpt)
    assert ckpt["step"] == 6 and ckpt["state"]["lm_pos"] == 6 and ckpt["config"]["max_steps"] == 6


def test_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    full = run_train(data_dir, tmp_path / "full", "--max-steps", 8, "--eval-every", 4)
    run_train(data_dir, tmp_path / "half", "--max-steps", 4, "--decay-steps", 8, "--eval-every", 4)
    resumed = run_train(data_dir, tmp_path / "half", "--resume", "--max-steps", 8)
    assert [r["step"] for r in resumed] == [0, 4, 8]  # appended to, not restarted
    assert [resumed[-1][k] for k in LOSSES] == [full[-1][k] for k in LOSSES]  # bit-identical
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "half" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    a = argparse.Namespace(lr=1e-3, warmup_steps=10, max_steps=110, decay_steps=None, min_lr_frac=0.1)
    assert train.lr_at(0, a) == pytest.approx(1e-4)
    assert train.lr_at(9, a) == pytest.approx(1e-3)
    assert train.lr_at(60, a) == pytest.approx(0.55e-3)
    assert train.lr_at(110, a) == pytest.approx(1e-4) == train.lr_at(500, a)


def test_batches_are_a_function_of_seed_and_position():
    import numpy as np
    tokens = np.arange(1000, dtype=np.uint16)
    x1, y1 = train.get_batch(tokens, 4, 8, 1, 0, 5, "cpu")
    x2, _ = train.get_batch(tokens, 4, 8, 1, 0, 5, "cpu")
    x3, _ = train.get_batch(tokens, 4, 8, 1, 0, 6, "cpu")
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are inputs shifted by one


def test_user_errors_are_one_line(data_dir, tmp_path):
    with pytest.raises(SystemExit, match="--resume: .*ckpt.pt not found"):
        run_train(data_dir, tmp_path / "nothing", "--resume")
    with pytest.raises(SystemExit, match=r"meta.json not found; prepare the data first: python data.py"):
        run_train(tmp_path / "no-data", tmp_path / "out")
    with pytest.raises(SystemExit, match="--block-size must be smaller"):
        run_train(data_dir, tmp_path / "out", "--block-size", 100000)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"loss is nan at step \d+; .*ckpt.pt still holds the last good eval"):
        run_train(data_dir, tmp_path, "--max-steps", 50, "--eval-every", 2, "--lr", 1e4, "--warmup-steps", 1,
                  "--grad-clip", 0, "--dynamics-every", 0)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_refuses_data_prepared_with_another_vocabulary(data_dir, corpus_txt, tmp_path):
    import data
    run_train(data_dir, tmp_path / "run", "--max-steps", 2, "--eval-every", 2, "--dynamics-every", 0)
    data.prepare([str(corpus_txt)], tmp_path / "other", vocab_size=128, val_fraction=0.1)  # same source bytes
    with pytest.raises(SystemExit, match="is not the data the checkpoint was trained on"):
        run_train(tmp_path / "other", tmp_path / "run", "--resume", "--max-steps", 4)


def test_flags_given_again_are_named_by_their_dest():
    a = config.get_args(["--no-proto-grad", "--max-steps=9", "--meta"])
    assert a.given == {"proto_grad", "max_steps", "meta"} and a.proto_grad is False


def test_eval_text_logs_loss_bits_per_byte_and_unknown_share(data_dir, tmp_path):
    import math

    import data as datalib
    text = "The cat sat on the mat near Paris. " * 60  # ASCII: one byte per character
    (tmp_path / "held.txt").write_text(text)
    rows = run_train(data_dir, tmp_path / "out", "--max-steps", 0, "--eval-text", tmp_path / "held.txt")
    got = rows[-1]["eval_text"]["held"]
    meta = datalib.load_meta(data_dir)
    tok = datalib.Tokenizer(meta, data_dir)
    old = tok.enc.encode_ordinary(text)
    # TINY: block 32, 2 eval batches x 4 rows -> 8 windows at stride 32; the targets are tokens 1..256
    targets = old[1:257]
    n_bytes = len(tok.enc.decode_bytes(targets))
    assert 0 < n_bytes < len(text) and n_bytes == sum(len(tok.enc.decode_single_token_bytes(t)) for t in targets)
    assert got["bpb"] == pytest.approx(got["loss"] * 256 / math.log(2) / n_bytes, rel=1e-9)
    unk = sum(int(i) == tok.unk for i in tok.encode(text)[1:257])
    assert got["unk_frac"] == unk / 256 and 0 < unk < 256  # the 256-id vocabulary lacks some of these words
    assert isinstance(rows[-1]["sample"], str)


def test_held_out_text_is_scored_through_the_chunked_loss_and_never_holds_the_logits(monkeypatch):
    import argparse
    from contextlib import nullcontext

    import numpy as np
    import torch.nn.functional as F

    from model import Transformer, preset
    from plumbing import heldout, linear_ce
    torch.manual_seed(0)
    m = Transformer(preset("11m", 256, 32))
    ids = np.random.default_rng(0).integers(0, 256, 1000)
    a = argparse.Namespace(block_size=32, batch_size=4, eval_batches=2)
    with torch.no_grad():  # what it must equal: the cross-entropy of the full logits of the 8 windows
        xy = torch.from_numpy(np.stack([ids[s : s + 33] for s in range(0, 8 * 32, 32)]))
        want = F.cross_entropy(m(xy[:, :-1]).flatten(0, 1), xy[:, 1:].flatten()).item()
    monkeypatch.setattr(m.lm_head, "forward", lambda *_: pytest.fail("text_loss asked for the full logits"))
    got = heldout.text_loss(m, (ids, np.ones(len(ids), dtype=np.int64)), None, a, "cpu", nullcontext())
    assert got["loss"] == pytest.approx(want, rel=1e-5) and got["bpb"] == pytest.approx(want / np.log(2), rel=1e-5)
    # the same path at the paper's eval batch, 256 x 512 tokens over 100,352 ids, on the meta device (shapes
    # without memory): one chunk of at most CHUNK_FLOATS["cuda"] logits at a time, never the 13G of them
    with torch.device("meta"):
        big = Transformer(preset("11m", block_size=512))
        x = torch.zeros(256, 512, dtype=torch.long)
        with torch.no_grad():
            big(x, x)
    assert linear_ce.LAST_CALL["rows"] == 256 * 512 and big.args.vocab_size == 100_352
    assert linear_ce.LAST_CALL["chunk_logits"] <= linear_ce.CHUNK_FLOATS["cuda"] < 256 * 512 * 100_352 // 100


def test_eval_text_errors_are_one_line(data_dir, tmp_path):
    with pytest.raises(SystemExit, match="--eval-text .*no such file"):
        run_train(data_dir, tmp_path / "a", "--max-steps", 0, "--eval-text", tmp_path / "none.txt")
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(SystemExit, match="--eval-text .*short.txt has .* tokens"):
        run_train(data_dir, tmp_path / "b", "--max-steps", 0, "--eval-text", tmp_path / "short.txt")


def test_generate_is_seeded_and_stays_within_the_block():
    from model import ModelArgs, Transformer
    from plumbing.heldout import generate
    torch.manual_seed(0)
    m = Transformer(ModelArgs(vocab_size=64, n_layer=2, d_model=24, hidden_dim=48, block_size=8)).eval()
    prompt = torch.randint(0, 64, (2, 12))  # longer than the block: only the last 8 are seen
    draw = lambda seed, **kw: generate(m, prompt, 6, generator=torch.Generator().manual_seed(seed), **kw)
    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (2, 18) and torch.equal(a[:, :12], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (draw(3, vocab_size=5)[:, 12:] < 5).all()  # ids above the real vocabulary are never drawn
    greedy = generate(m, prompt, 1, temperature=1.0, top_k=1)  # top-1: the argmax, whatever the dice
    assert torch.equal(greedy[:, -1], m(prompt[:, -8:])[:, -1].argmax(-1))


class HostReads(TorchDispatchMode):
    """Records every operation that would make the host wait for a GPU: reading a value back
    (item, float(), bool(), .tolist(), .numpy(), .cpu()) and the ops whose output size depends on
    values (nonzero, masked_select, unique, a boolean index). On a CPU nothing waits, but the
    same calls are made, so counting them here tells what a GPU step would do."""
    SIZE_FROM_VALUES = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
                        "aten::unique_dim", "aten::unique_consecutive", "aten::bincount"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.seen = []
        for name in ("tolist", "numpy", "cpu", "__array__"):  # no dispatch: caught at the Python method
            monkeypatch.setattr(torch.Tensor, name, self.wrap(name, getattr(torch.Tensor, name)))

    def wrap(self, name, method):
        def reading(t, *args, **kwargs):
            self.seen.append(name)
            return method(t, *args, **kwargs)
        return reading

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        bool_index = name == "aten::index" and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in self.SIZE_FROM_VALUES or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("flags", [["--task", "smlmt", "--grad-accum", "2"], ["--task", "pico", "--learn-inner-lr"],
                                   ["--task", "lm"], ["--tams", "--inner-opt", "adamw", "--inner-params", "top-1"]],
                         ids=["smlmt-accum", "pico-learned-lr", "lm", "tams-adamw"])
def test_a_step_never_reads_a_value_back_to_the_host(data_dir, tmp_path, monkeypatch, flags):
    """Issue 28: on a GPU, a read-back inside the step drains the queue every step (at 11m the
    GPU then idles for most of a meta step). Loss, accuracies and |g| stay tensors until the
    log line. Both kinds of step, through train.py's own train_step, AdamW's update included."""
    a = config.get_args(["--data-dir", str(data_dir), "--out-dir", str(tmp_path), *TINY, "--meta", *flags])
    device, dtype, ctx = config.hardware(a.device, a.dtype)
    run = train.setup(a, 0, 1, device, dtype, ctx)
    for kind in ("lm", "meta", "lm", "meta"):  # the second of each: AdamW's state exists by then
        with HostReads(monkeypatch) as reads:
            loss, stats, tokens, gnorm = train.train_step(run, a, kind, 0)
        monkeypatch.undo()
        assert reads.seen == [], f"{kind} step read back: {reads.seen}"
        assert isinstance(loss, torch.Tensor) and isinstance(gnorm, torch.Tensor)
        assert all(v is None or isinstance(v, torch.Tensor) for v in stats.values())
