"""Tiny random-weight models saved as local directories, so tests need no download.

Each model comes with a word-level tokenizer over ``WORDS`` whose special tokens match its family:
BERT wraps sentences in [CLS] ... [SEP], Llama prepends <s>, GPT-2 adds nothing.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = [f"w{i}" for i in range(120)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
ARCHS = ("gpt2", "bert", "llama")


def random_sentences(n: int, seed: int = 0, min_words: int = 2, max_words: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(n)]


def _tokenizer(arch: str) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if arch == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        names = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    elif arch == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        names = dict(bos_token="<s>", eos_token="</s>", pad_token="[PAD]", unk_token="[UNK]")
    else:
        names = dict(bos_token="</s>", eos_token="</s>", unk_token="[UNK]")  # GPT-2: no pad token
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def _model(arch: str, vocab_size: int, hidden: int, layers: int):
    common = dict(vocab_size=vocab_size, num_hidden_layers=layers, num_attention_heads=2)
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                n_embd=hidden,
                n_layer=layers,
                n_head=2,
                vocab_size=vocab_size,
                n_positions=128,
                bos_token_id=5,
                eos_token_id=5,
            )
        )
    if arch == "bert":
        return BertModel(
            BertConfig(hidden_size=hidden, intermediate_size=2 * hidden, max_position_embeddings=128, **common)
        )
    if arch == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_key_value_heads=1,
                max_position_embeddings=128,
                bos_token_id=4,
                eos_token_id=5,
                pad_token_id=0,
                **common,
            )
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS}")


def make_tiny_model(arch: str, directory: Path, hidden: int = 16, layers: int = 3, seed: int = 0) -> Path:
    """Save a random-weight ``arch`` model and its tokenizer into ``directory``; return it."""
    import torch

    torch.manual_seed(seed)
    tokenizer = _tokenizer(arch)
    model = _model(arch, len(SPECIALS) + len(WORDS), hidden, layers).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
