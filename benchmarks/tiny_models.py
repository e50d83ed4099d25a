"""Random causal LMs of known shapes and byte-level BPE tokenizers trained in code (nothing to download).

The one builder of the benchmarks' random LMs (`benchmarks.lm_speed`'s `random:SHAPE`) and the tests'
tiny ones (`tests/helpers.py`, `tests/test_smollm2.py`): speed does not depend on the weights, and a
test's reference is computed on the same random model.
"""

import functools

import tokenizers
import torch
import transformers
from tokenizers import decoders, pre_tokenizers, processors, trainers

# SmolLM2's chat template (ChatML), without its default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # Ids 0, 1, 2 of every trained tokenizer.
LLAMA_SHAPES = {
    "micro": dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32
    ),
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=1000,
        tie_word_embeddings=False,
    ),
    "smollm2": dict(
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "llama-1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
}


@functools.cache
def _trained_bpe(corpus: tuple[str, ...], vocab_size: int) -> str:
    """A byte-level BPE trained on `corpus`, as JSON (training is deterministic)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return tok.to_str()


def byte_tokenizer(
    corpus: tuple[str, ...],
    vocab_size: int,
    *,
    bos_token: str = "<|endoftext|>",
    eos_token: str = "<|im_end|>",
    prepend_bos: bool = False,
    chat: bool = True,
) -> transformers.PreTrainedTokenizerFast:
    """A GPT-2 / SmolLM2 style byte-level BPE trained on `corpus`, `SPECIAL_TOKENS` first.

    Args:
        prepend_bos: put `bos_token` before every encoded text (Llama style); else none (GPT-2 style).
        chat: give it SmolLM2's ChatML template.
    """
    tok = tokenizers.Tokenizer.from_str(_trained_bpe(corpus, vocab_size))
    if prepend_bos:
        bos_id = SPECIAL_TOKENS.index(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, bos_id)]
        )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
    )
    if chat:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def random_llama(shape: str = "tiny", seed: int = 0, **config) -> transformers.LlamaForCausalLM:
    """A random `LlamaForCausalLM` of `LLAMA_SHAPES[shape]` (config keys overridden by `config`), float32, eval."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**(LLAMA_SHAPES[shape] | config))).eval()


def random_gpt2(vocab_size: int, seed: int = 0, layers: int = 2, **config) -> transformers.GPT2LMHeadModel:
    """A random GPT-2 (learned positions, tied head; 32 wide, 2 heads), float32, eval."""
    torch.manual_seed(seed)
    shape = dict(vocab_size=vocab_size, n_embd=32, n_layer=layers, n_head=2, n_positions=512, initializer_range=0.1)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**(shape | config))).eval()
