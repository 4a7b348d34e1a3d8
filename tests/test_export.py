"""tools/export.py: a checkpoint as a Hugging Face Llama, checked by loading it back with transformers."""
import pytest
import torch
from conftest import run_train

import data
from plumbing import checkpoint
from tools import export

transformers = pytest.importorskip("transformers", reason="export tests load the result with transformers "
                                                          "(pip install transformers)")


@pytest.fixture(scope="module")
def full_vocab_dir(tmp_path_factory, corpus_txt):
    out = tmp_path_factory.mktemp("full")
    data.prepare([str(corpus_txt)], out, vocab_size=None, val_fraction=0.1)
    return out


@pytest.fixture(scope="module")
def runs(data_dir, full_vocab_dir, tmp_path_factory):
    """A 2-step checkpoint per vocabulary, trained once for the tests below."""
    out = {}
    for vocab, d in (("trimmed", data_dir), ("full", full_vocab_dir)):
        out[vocab] = tmp_path_factory.mktemp(vocab) / "run"
        run_train(d, out[vocab], "--max-steps", 2, "--eval-every", 2, "--eval-episodes", 0)
    return out


def logits_gap(ckpt, hf_dir, vocab):
    ours = checkpoint.build_model(checkpoint.load(ckpt)).eval()
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    gaps = []
    for T in (2, 9, 32):  # several lengths: position 0 alone is not rotated at all
        x = torch.randint(0, vocab, (2, T), generator=gen)
        with torch.no_grad():
            gaps.append((ours(x) - hf(x).logits).abs().max().item())
    return max(gaps)


@pytest.mark.parametrize("vocab", ["trimmed", "full"])
def test_hf_llama_gives_our_logits_and_needs_the_qk_permutation(data_dir, full_vocab_dir, runs, tmp_path, vocab):
    d = data_dir if vocab == "trimmed" else full_vocab_dir
    ckpt, n = runs[vocab] / "ckpt.pt", data.load_meta(d)["vocab_size"]
    export.export(ckpt, tmp_path / "hf", tokenizer=vocab == "trimmed")  # the full tokenizer: tested below
    assert logits_gap(ckpt, tmp_path / "hf", n) < 1e-4
    export.export(ckpt, tmp_path / "hf_unpermuted", permute=False, tokenizer=False)  # loads and runs, and is wrong
    assert logits_gap(ckpt, tmp_path / "hf_unpermuted", n) > 1e-3
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert cfg.tie_word_embeddings and cfg.num_key_value_heads == 4 and cfg.vocab_size % 128 == 0
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "padding" in readme and f"SMLMT mask: {data.load_meta(d)['mask_id']}" in readme
    assert ("no tokenizer written: this checkpoint's trimmed vocabulary" in readme) == (vocab == "trimmed")


def test_a_full_vocabulary_export_tokenizes_as_the_project_does(full_vocab_dir, runs, tmp_path):
    export.export(runs["full"] / "ckpt.pt", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = data.Tokenizer(data.load_meta(full_vocab_dir), full_vocab_dir)
    text = "Alice painted the violin near the harbor in Vienna. Émile's café: 1,234 naïve “quotes”\n\tand tabs."
    assert hf_tok.encode(text, add_special_tokens=False) == ours.encode(text).tolist()
    assert hf_tok.convert_tokens_to_ids("<|endoftext|>") == ours.eot and hf_tok.convert_tokens_to_ids("<|mask|>") == ours.mask


def test_tarp_and_tams_checkpoints_are_refused_in_one_line(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "run", "--max-steps", 0, "--eval-episodes", 0, "--tams")
    with pytest.raises(SystemExit, match="^export.py: error: --ckpt .*a --tarp or --tams model is no Llama"):
        export.main(["--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--out", str(tmp_path / "hf")])
