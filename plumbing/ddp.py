"""
One process or several. Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment)
train.py runs once per device; this is what it needs beyond DistributedDataParallel itself:
joining the process group, and ending every rank with the same one-line error when any one
of them fails, so that none is left waiting in a collective for a rank that has exited.
"""
import datetime
import os
import sys
import traceback

import torch
import torch.distributed as dist

from plumbing.errors import UserError


def setup(device):
    """(rank, world size). Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment)
    each process joins the process group, NCCL on CUDA and gloo on CPU, and uses the GPU
    numbered LOCAL_RANK. Only rank 0 prints; the others' stdout goes to /dev/null."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" now names this process's GPU
    # the other ranks wait in a collective while rank 0 prepares data (TinyStories: minutes) and
    # runs its first eval, which may compile: NCCL's default of 10 minutes would end them
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=datetime.timedelta(minutes=60))
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    return rank, world


def agree(fn, rank, world, who="all"):
    """Run fn on every rank ("all"), on rank 0 while the others wait ("rank0"), or on rank 0 and
    then on the others ("rank0_first": rank 0 may write files, such as the SMLMT cache, that the
    others then read). An error on any rank ends every rank with its one-line message, so that no
    rank is left waiting in a collective for one that has exited. Returns fn's result."""
    out = None
    for mine in {"all": [True], "rank0": [rank == 0], "rank0_first": [rank == 0, rank != 0]}[who]:
        err = None
        if mine:
            try:
                out = fn()
            except UserError as e:  # our one-line errors
                err = str(e)
            except Exception as e:  # a bug or an OSError: the traceback here, the message on every rank
                traceback.print_exc()
                err = f"rank {rank}: {type(e).__name__}: {e}"
        if world > 1:
            errs = [None] * world
            dist.all_gather_object(errs, err)
            err = next((e for e in errs if e is not None), None)
        if err is not None:
            raise UserError(err)
    return out


def wrap(net, world, device):
    """DistributedDataParallel around train.Objective when there are several ranks. LM steps leave
    the episode head without gradients, hence find_unused_parameters (their grads stay None, as in
    one process, so AdamW skips them the same way)."""
    if world == 1:
        return net
    return torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[torch.cuda.current_device()] if device == "cuda" else None, find_unused_parameters=True)
