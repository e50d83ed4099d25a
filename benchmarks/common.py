"""Shared by the benchmarks: a row-counting model, and random-weight models of known shapes."""

import tokenizers
import torch
import transformers
from tokenizers import models as tokenizer_models
from tokenizers import pre_tokenizers, processors

from benchmarks import tiny_models
from lit_sig import models

# Words that are one word piece each, so a sentence of T of them has T tokens.
WORDS = "the film is not bad but the plot never quite works and i wanted more from it".split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Random-weight shapes: speed does not depend on the weights.
SHAPES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


class CountingModel:
    """Counts the rows a model is asked for (through `predict` or the device path), passing all through.

    `rows` counts forward+backward rows, `forward_only` forward-only ones;
    `passes` lists the rows of each device-path pass, as `(rows, with_grads)`.
    """

    def __init__(self, model: models.HFSequenceClassifier):
        self.model, self.rows, self.forward_only = model, 0, 0
        self.passes: list[tuple[int, bool]] = []
        self.device = model.device

    def predict(self, inputs, **kw):
        inputs = list(inputs)
        self.rows += len(inputs)
        return self.model.predict(inputs, **kw)

    def path_inputs(self, inputs, classes, fields):
        prepared = self.model.path_inputs(inputs, classes, fields)
        self.forward_only += sum(p.input_score is not None for p in prepared)  # Scored at x on the way.
        return prepared

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        return self.model.rows_per_pass(num_tokens, with_grads)

    def score_rows(self, pieces, with_grads: bool):
        count = sum(len(rows) for _, rows in pieces)
        self.passes.append((count, with_grads))
        if with_grads:
            self.rows += count
        else:
            self.forward_only += count
        return self.model.score_rows(pieces, with_grads)

    def forward_rows(self, pieces):
        """The captum bridge's forward function: rows that require grad will get a backward pass."""
        for _, rows in pieces:
            if rows.requires_grad:
                self.rows += len(rows)
            else:
                self.forward_only += len(rows)
        return self.model.forward_rows(pieces)

    def __getattr__(self, name):
        return getattr(self.model, name)


def byte_tokenizer(vocab_size: int = 1000) -> transformers.PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE with ChatML markers, trained in code on `WORDS` (nothing to download)."""
    return tiny_models.byte_tokenizer((" ".join(WORDS),) * 4, vocab_size, bos_token="<|im_start|>")


def synthetic_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer over `WORDS`, built in code (nothing to download)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(WORDS)))}
    tokenizer = tokenizers.Tokenizer(tokenizer_models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def random_model(
    shape: str, device: str | None = None, precision: str = "float32", seed: int = 0, **kwargs
) -> models.HFSequenceClassifier:
    """A random-weight BERT classifier of a known shape, with `synthetic_tokenizer()`."""
    tokenizer = synthetic_tokenizer()
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=2, **SHAPES[shape]
    )
    module = transformers.BertForSequenceClassification(config).eval()
    return models.HFSequenceClassifier(
        module, tokenizer, labels=["0", "1"], device=device, precision=precision, **kwargs
    )
