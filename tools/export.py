"""
Export a train.py checkpoint as a Hugging Face Llama (LlamaForCausalLM), for the tools the field
uses: transformers, lm-evaluation-harness.

    python -m tools.export --ckpt out/run/ckpt.pt --out hf/run

Writes config.json, model.safetensors (written here, no library needed) and README.md (which ids
are real tokens); for a full-cl100k checkpoint also tokenizer.json and tokenizer_config.json,
when transformers is installed (it converts tiktoken's ranks). A trimmed vocabulary
(data.py --vocab-size) is no tiktoken encoding: its model is exported, its tokenizer is not.

Our decoder is exactly a Llama, with one difference in layout: our RoPE rotates interleaved
(even, odd) channel pairs, HF's rotates the two halves of each head. So the rows of q and k are
permuted per head, as Meta's own conversion does. Skipping it still loads and runs, silently
wrong: tests/test_export.py compares the logits.
"""
import argparse
import base64
import json
import struct
import sys
from pathlib import Path

import data as datalib
from plumbing import checkpoint
from plumbing.errors import UserError


def halves(w, n_heads):
    """Rows of a q or k projection, per head, from interleaved pairs (0,1),(2,3).. to halves."""
    d_out, d_in = w.shape
    return w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)  # (n*hd, d)


def hf_state_dict(state, a, permute=True):
    """Our parameter names and layouts -> LlamaForCausalLM's. The output layer is tied to the
    embedding, so only the embedding is stored (tie_word_embeddings)."""
    p = (lambda w, n: halves(w, n)) if permute else (lambda w, n: w)
    out = {"model.embed_tokens.weight": state["tok_emb.weight"], "model.norm.weight": state["norm.weight"]}
    for i in range(a["n_layer"]):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out |= {hf + "input_layernorm.weight": state[ours + "attn_norm.weight"],
                hf + "post_attention_layernorm.weight": state[ours + "mlp_norm.weight"],
                hf + "self_attn.q_proj.weight": p(state[ours + "attn.q.weight"], a["n_head"]),
                hf + "self_attn.k_proj.weight": p(state[ours + "attn.k.weight"], a["n_kv_head"]),
                hf + "self_attn.v_proj.weight": state[ours + "attn.v.weight"],
                hf + "self_attn.o_proj.weight": state[ours + "attn.o.weight"],
                hf + "mlp.gate_proj.weight": state[ours + "mlp.w1.weight"],
                hf + "mlp.up_proj.weight": state[ours + "mlp.w3.weight"],
                hf + "mlp.down_proj.weight": state[ours + "mlp.w2.weight"]}
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def hf_config(a, dmeta):
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a["vocab_size"],
            "hidden_size": a["d_model"], "intermediate_size": a["hidden_dim"], "num_hidden_layers": a["n_layer"],
            "num_attention_heads": a["n_head"], "num_key_value_heads": a["n_kv_head"],
            "head_dim": a["d_model"] // a["n_head"], "hidden_act": "silu", "rms_norm_eps": a["norm_eps"],
            "rope_theta": a["rope_theta"], "max_position_embeddings": a["block_size"], "tie_word_embeddings": True,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": dmeta["eot_id"], "eos_token_id": dmeta["eot_id"],
            "torch_dtype": "float32"}


def save_safetensors(tensors, path, metadata=None):
    """The safetensors format by hand: an 8-byte little-endian header length, a JSON header
    (dtype, shape, byte offsets per tensor, padded to 8 bytes), then the raw bytes."""
    header, offset, blobs = {"__metadata__": metadata or {"format": "pt"}}, 0, []
    for name, t in tensors.items():
        b = t.numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    datalib.write_atomic(path, lambda f: [f.write(struct.pack("<Q", len(h))), f.write(h), *map(f.write, blobs)])


def ids_note(a, dmeta):
    """Which ids are real tokens: the padding above the vocabulary and the reserved ids."""
    real = dmeta["vocab_size"]
    lines = [f"- ids 0..{real - 1} are the prepared vocabulary ({'trimmed, see vocab_map' if dmeta.get('vocab_map') else 'cl100k_base'}); "
             f"ids {real}..{a['vocab_size'] - 1} are padding (a multiple of 128), never real tokens.",
             f"- end of text: {dmeta['eot_id']}; the SMLMT mask: {dmeta['mask_id']} (never in text)"
             + (f"; unknown: {dmeta['unk_id']}" if dmeta.get("unk_id") is not None else "") + "."]
    return "\n".join(lines)


def write_tokenizer(out, dmeta):
    """tokenizer.json from tiktoken's cl100k ranks through transformers' converter, plus the mask
    as a special token. Returns a line saying what was written, or why not."""
    if dmeta.get("vocab_map"):
        return ("no tokenizer written: this checkpoint's trimmed vocabulary (vocab_map) is no tiktoken encoding; "
                "encode with the project's data.Tokenizer, or train with the full vocabulary to export one")
    try:
        from tokenizers import AddedToken
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        return "no tokenizer written: it needs transformers (pip install transformers); the model is exported"
    enc = datalib.cl100k()
    (out / "tiktoken").mkdir(parents=True, exist_ok=True)
    ranks = out / "tiktoken" / "cl100k_base.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in enc._mergeable_ranks.items()))
    bpe = TikTokenConverter(vocab_file=str(ranks), pattern=enc._pat_str, extra_special_tokens={}).converted()
    # added tokens take the next free id, so they go in id order, cl100k's unassigned ids as placeholders
    names = {i: t for t, i in enc._special_tokens.items()} | {dmeta["mask_id"]: "<|mask|>"}
    first = bpe.get_vocab_size()
    bpe.add_special_tokens([AddedToken(names.get(i, f"<|unused_{i}|>"), special=True) for i in range(first, max(names) + 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=datalib.EOT_TEXT, bos_token=datalib.EOT_TEXT)
    tok.save_pretrained(out)
    return "tokenizer.json written (cl100k_base, the same ids; the SMLMT mask as <|mask|>)"


def export(ckpt_path, out, permute=True, tokenizer=True):
    ckpt = checkpoint.load(ckpt_path, fallback=False)
    a, dmeta = ckpt["model_args"], ckpt["data_meta"]
    if ckpt["config"].get("tarp") or ckpt["config"].get("tams"):
        raise UserError(f"--ckpt {ckpt_path}: a --tarp or --tams model is no Llama (extra weights in every block); "
                        "export a checkpoint trained without them")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(a, dmeta), indent=2))
    save_safetensors(hf_state_dict(ckpt["model"], a, permute), out / "model.safetensors")
    note = write_tokenizer(out, dmeta) if tokenizer else "tokenizer not written (--no-tokenizer)"
    (out / "README.md").write_text(f"# {Path(ckpt_path)} as a Hugging Face Llama\n\nExported by metalm's export.py "
                                   f"from step {ckpt['step']}.\n\n{ids_note(a, dmeta)}\n- {note}.\n")
    return note


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint")
    p.add_argument("--out", required=True, help="the directory to write (config.json, model.safetensors, ...)")
    p.add_argument("--no-tokenizer", action="store_true", help="write the model only (the tokenizer takes seconds)")
    a = p.parse_args(argv)
    try:
        note = export(a.ckpt, a.out, tokenizer=not a.no_tokenizer)
    except UserError as e:
        sys.exit(f"export.py: error: {e}")
    print(f"wrote {a.out}: config.json, model.safetensors, README.md; {note}")


if __name__ == "__main__":
    main()
