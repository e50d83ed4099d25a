"""Shared test helpers: tiny causal LMs and their tokenizers, built in code (no download)."""

import functools

import tokenizers
import torch
import transformers
from tokenizers import decoders, pre_tokenizers, processors, trainers

_CORPUS = [
    "The capital of France is Paris.",
    "The movie was wonderful and the acting was great.",
    "Is this review positive or negative? Answer in one word.",
    "Two plus two is four. Three plus four is seven.",
    "Hello world! How are you today?",
    "The soundtrack was lovely, but the plot made no sense.",
    "Translate to French: good morning. Bonjour.",
    "user assistant system user assistant",
]
# SmolLM2's chat template (ChatML), without its default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def _trained_bpe(vocab_size: int) -> str:
    """A byte-level BPE trained on `_CORPUS`, as JSON (training is deterministic)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 3, trainer)
    return tok.to_str()


def tiny_lm_tokenizer(
    bos: bool = True, chat: bool = True, vocab_size: int = 400
) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / SmolLM2 style).

    Args:
        bos: prepend `<|endoftext|>` as BOS to every encoded text (Llama style); else none (GPT-2 style).
        chat: give it SmolLM2's ChatML template, `<|im_end|>` as EOS.
    """
    tok = tokenizers.Tokenizer.from_str(_trained_bpe(vocab_size))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
        )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0, layers: int = 2, max_positions: int = 512
):
    """A random Llama (grouped-query attention, untied head) in float32."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(tokenizer: transformers.PreTrainedTokenizerBase, seed: int = 0, layers: int = 2):
    """A random GPT-2 (learned positions, tied head) in float32."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=layers,
        n_head=2,
        n_positions=512,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.GPT2LMHeadModel(config).eval()
