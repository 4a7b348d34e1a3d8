"""Several processes (gloo on CPU): torchrun DDP must train exactly what one process with
--grad-accum trains, write files from rank 0 only, all-reduce once per step whatever the inner
loop does, and end every rank with the same one-line error instead of hanging."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CUT_AT_3, TINY, run_train

ROOT = Path(__file__).resolve().parents[1]
SHORT = [*TINY, "--max-steps", "6", "--decay-steps", "6", "--eval-every", "3", "--dynamics-every", "0",
         "--meta-start", "0", *CUT_AT_3]  # meta steps 1 and 4: both halves of the resumed run take both kinds


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n, *args, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "train.py", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rows(out):
    return [json.loads(line) for line in open(Path(out) / "log.jsonl")]


@pytest.fixture(scope="module")
def two_ranks(data_dir, tmp_path_factory):
    """One 2-rank run under torchrun, shared by the tests below (each launch costs seconds): a
    --meta run from step 0, so it takes LM steps and meta steps both."""
    two = tmp_path_factory.mktemp("ddp") / "two"
    r = torchrun(2, "--data-dir", data_dir, "--out-dir", two, *SHORT, "--meta")
    assert r.returncode == 0, r.stderr[-2000:]
    return two, r


def test_two_ranks_train_what_one_rank_with_grad_accum_two_trains(data_dir, tmp_path, two_ranks):
    (two, r), one = two_ranks, tmp_path / "one"
    run_train(data_dir, one, *SHORT[len(TINY):], "--meta", "--grad-accum", "2")  # in this process: no launch
    a, b = rows(two), rows(one)
    assert [x["step"] for x in a] == [0, 3, 6]  # one row per eval: rank 1 wrote none
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], rel=1e-5)
    assert a[-1]["tokens"] == b[-1]["tokens"]  # both micro-batches counted
    assert a[-1]["lm_steps"] > 0 and a[-1]["train_loss"] == pytest.approx(b[-1]["train_loss"], rel=1e-5)  # LM steps
    assert a[-1]["meta_steps"] > 0 and a[-1]["meta_loss"] == pytest.approx(b[-1]["meta_loss"], rel=1e-5)  # meta steps
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert r.stdout.count("eval step 6:") == 1  # only rank 0 prints


def test_resume_under_ddp_continues_the_uninterrupted_run(data_dir, tmp_path, two_ranks):
    (whole, _), cut = two_ranks, tmp_path / "cut"
    # the first half in this process with --grad-accum 2 (what 2 ranks train, as tested above; a
    # resumed run may change the number of processes), the second half under torchrun
    run_train(data_dir, cut, *SHORT[len(TINY):], "--meta", "--max-steps", "3", "--grad-accum", "2")
    r = torchrun(2, "--data-dir", data_dir, "--out-dir", cut, *SHORT, "--meta", "--resume", "--grad-accum", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [x["step"] for x in rows(cut)] == [0, 3, 6]
    assert rows(cut)[-1]["val_loss"] == pytest.approx(rows(whole)[-1]["val_loss"], rel=1e-6)


def test_a_bad_flag_on_one_rank_ends_both_ranks_with_one_line(data_dir, tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = []
    for rank, d in enumerate([data_dir, tmp_path / "missing"]):  # rank 1 is pointed at no data
        cmd = [sys.executable, "train.py", "--data-dir", str(d), "--out-dir", str(tmp_path / "out"), *SHORT]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        errs = [p.communicate(timeout=120)[1].strip().splitlines() for p in procs]  # a hang fails here
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [1, 1]
    assert errs[0][-1] == errs[1][-1] and errs[0][-1].startswith("train.py: error: --data-dir")
    assert "missing" in errs[0][-1] and "Traceback" not in "".join(errs[0] + errs[1])


def _count_all_reduces(rank, world, port, data_dir, result):
    import data
    import learners
    import tasks
    import train
    from model import Transformer, preset
    from plumbing import config
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    a = config.get_args(["--data-dir", data_dir, *TINY, "--task", "lm", "--inner-params", "all", "--meta"])
    dmeta = data.load_meta(data_dir)
    task = tasks.make(a, Path(data_dir), dmeta, *data.load_bins(data_dir, dmeta))
    model = Transformer(dataclasses.replace(preset("11m", 256, 32), n_layer=2))  # the buckets, not the depth, matter
    head = task.make_head(model.args.d_model, model.args.vocab_size)
    net = torch.nn.parallel.DistributedDataParallel(train.Objective(model, model, head, torch.nn.ParameterDict(), task, learners.make(a)),
                                                    find_unused_parameters=True)
    calls = []

    def hook(_, bucket):  # count the buckets reduced, then reduce as DDP would (mean over ranks)
        calls.append(1)
        return dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future().then(lambda f: f.value()[0])

    net.register_comm_hook(None, hook)
    g = torch.Generator().manual_seed(rank)  # different data per rank, so the reduction shows
    x = torch.randint(0, 256, (2, 3, 17), generator=g)
    counts = []
    for kind, batch in (("lm", (x[0, :, :-1], x[0, :, 1:])),
                        ("meta", {"xs": x[0, :, :-1], "ys": x[0, :, 1:], "xq": x[1, :, :-1], "yq": x[1, :, 1:]})):
        calls.clear()
        net(kind, batch)[0].backward()  # the lm episode's inner loop takes 3 grads of every weight first
        counts.append(len(calls))
        model.zero_grad(set_to_none=True)
    loss, _ = net("meta", batch)
    loss.backward()
    grads = [torch.empty_like(model.tok_emb.weight) for _ in range(world)]
    dist.all_gather(grads, model.tok_emb.weight.grad)
    result[rank] = (counts, torch.equal(grads[0], grads[1]))
    dist.destroy_process_group()


def test_the_inner_loop_all_reduces_nothing_and_the_meta_gradient_is_reduced(data_dir):
    result = mp.Manager().dict()
    mp.spawn(_count_all_reduces, args=(2, free_port(), str(data_dir), result), nprocs=2, join=True)
    for rank in (0, 1):
        (lm_calls, meta_calls), same = result[rank]
        assert lm_calls >= 1 and meta_calls == lm_calls  # one pass over the buckets per backward, inner steps none
        assert same  # both ranks hold the mean meta-gradient
