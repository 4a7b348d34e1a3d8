"""
What the language model is asked at each eval beyond the val batches (train.py): the loss and
bits per byte of held-out text (--eval-text), and a seeded sample (--sample-prompt).
"""
import math
from pathlib import Path

import numpy as np
import torch

import data as datalib
from plumbing.errors import UserError


def load_texts(a, tok):
    """{name: (ids, bytes per token)} of the --eval-text files, named by file name without extension."""
    texts = {}
    for f in a.eval_text:
        name = Path(f).name.split(".")[0]
        if name in texts:
            raise UserError(f"--eval-text {f}: another file is also named {name!r}; rename one")
        texts[name] = datalib.held_out_text(f, tok, tok.meta.get("text_field") or "text")
        if len(texts[name][0]) <= a.block_size:
            raise UserError(f"--eval-text {f} has {len(texts[name][0])} tokens; it needs more than "
                     f"--block-size ({a.block_size})")
    return texts


@torch.no_grad()
def text_loss(model, text, unk_id, a, device, ctx):
    """Next-token loss on the first --eval-batches x --batch-size windows of a held-out text (block_size
    + 1 tokens each, stride block_size), and the same in bits per UTF-8 byte of the tokens scored:
    comparable across vocabularies, unlike a loss per token. unk_frac: the share of scored tokens
    a trimmed vocabulary maps to <unk> (an easier target than the word it stands for)."""
    ids, nbytes = text
    T = a.block_size
    starts = np.arange(0, len(ids) - T, T)[: a.eval_batches * a.batch_size]
    nats = unk = 0.0
    model.eval()
    for i in range(0, len(starts), a.batch_size):
        xy = torch.from_numpy(np.stack([ids[s : s + T + 1] for s in starts[i : i + a.batch_size]])).to(device)  # (B, T+1)
        with ctx:  # the model's own loss path: chunked, never the (B, T, V) logits (at 256 x 512, 53 GB of them)
            nats = nats + model(xy[:, :-1], xy[:, 1:]).float() * xy[:, 1:].numel()  # mean -> sum; stays on the device
        unk = unk + ((xy[:, 1:] == unk_id).sum() if unk_id is not None else 0)
    model.train()
    nats, unk, n = float(nats), float(unk), len(starts) * T
    scored = sum(int(nbytes[s + 1 : s + T + 1].sum()) for s in starts)
    return {"loss": nats / n, "bpb": nats / math.log(2) / scored, "unk_frac": unk / n}


def sample(model, tok, a, device, vocab_size):
    """A seeded continuation of --sample-prompt: the same draws at every eval, so a reader sees
    the model change, not the dice."""
    prompt = torch.tensor([tok.encode(a.sample_prompt).tolist() or [tok.eot]], device=device)  # (1, P)
    gen = torch.Generator(device=device).manual_seed(a.seed)
    model.eval()
    out = generate(model, prompt, a.sample_tokens, generator=gen, vocab_size=vocab_size)
    model.train()
    return tok.decode(out[0, prompt.size(1):].tolist())


@torch.no_grad()
def generate(model, idx, n, temperature=0.8, top_k=50, generator=None, vocab_size=None):
    """Append n sampled tokens to idx (B, T). Each step runs the model on the last block_size
    tokens and samples from the last position's softmax at `temperature`, among the top_k most
    likely ids below vocab_size (the padded ids above it are never real tokens). No key/value
    cache: at these sizes recomputing is cheap, and the code stays the forward pass."""
    for _ in range(n):
        logits = model(idx[:, -model.args.block_size:])[:, -1, :vocab_size].float() / temperature  # (B, V)
        if top_k:
            kth = logits.topk(min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx
