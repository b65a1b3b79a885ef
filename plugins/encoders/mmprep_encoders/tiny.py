"""Tiny random-weight models for examples and tests: ``python -m mmprep_encoders.tiny DIR``.

Writes DIR/vae (AutoencoderKL, f=2), DIR/clip (CLIPTextModel + hand-made CLIP BPE tokenizer),
DIR/t5 (T5EncoderModel + Unigram tokenizer trained in memory) and DIR/lm (GPT-2 + byte-level
BPE tokenizer without pad token), each loadable with from_pretrained(path). No downloads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CORPUS = [
    "a photo of a cat sitting on a sofa",
    "a red sports car parked near the sea",
    "two dogs playing in the snow at night",
    "an astronaut riding a horse on the moon",
    "a bowl of soup with bread and butter",
    "the quick brown fox jumps over the lazy dog",
] * 4


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_clip(root):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    syms = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in syms:
        vocab[s] = len(vocab)
    for s in syms:
        vocab[s + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("o", "n</w>"), ("i", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d = root / "clip"
    d.mkdir()
    (root / "clip_vocab.json").write_text(json.dumps(vocab))
    (root / "clip_merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(root / "clip_vocab.json"), str(root / "clip_merges.txt"))
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    CLIPTextModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_t5(root):
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tk.train_from_iterator(CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tk.token_to_id("</s>"))])
    tok = T5TokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)
    torch.manual_seed(1)
    cfg = T5Config(vocab_size=tk.get_vocab_size(), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    d = root / "t5"
    T5EncoderModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_lm(root):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(2)
    cfg = GPT2Config(vocab_size=tk.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=128)
    d = root / "lm"
    GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_vae(root):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64,
    )
    d = root / "vae"
    vae.save_pretrained(d)
    return d


def make_all(root) -> dict[str, Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {"vae": make_vae(root), "clip": make_clip(root), "t5": make_t5(root), "lm": make_lm(root)}


if __name__ == "__main__":
    for name, path in make_all(sys.argv[1] if len(sys.argv) > 1 else "tiny-models").items():
        print(f"{name}={path}")
