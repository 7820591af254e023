"""Tiny random Llama models with a locally trained byte-level BPE tokenizer and a ChatML chat template.

`build_tiny_llama(dir)` writes a normal Hugging Face checkpoint (config, safetensors, tokenizer files) in well under a
second: transformers, TRL and vLLM load it like any hub model, so tests exercise the real code paths without network.
Defaults keep head_dim = 32 (vLLM's CPU attention needs >= 32).
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "user assistant system: answer the question step by step.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea. The sea is wide and blue and deep.",
    "1 2 3 4 5 6 7 8 9 10 plus minus times equals",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}-_/",
]


def build_tokenizer(vocab_size: int = 384, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer (`PreTrainedTokenizerFast`) trained on `corpus`, with ChatML special tokens and
    chat template; ids 0-4 are the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((corpus or DEFAULT_CORPUS) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(directory, *, vocab_size: int = 384, hidden_size: int = 64, layers: int = 2, heads: int = 2,
                     kv_heads: int | None = None, intermediate_size: int = 128, max_positions: int = 512,
                     tie_word_embeddings: bool = False, seed: int = 0, corpus: list[str] | None = None,
                     tokenizer=None) -> Path:
    """Write a random LlamaForCausalLM + tokenizer to `directory` and return it as a Path.

    Same `seed` and arguments -> the same weights. Pass `tokenizer` to share one tokenizer between a teacher and a
    student (their ids must mean the same thing for token-level distillation)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tokenizer(vocab_size, corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
