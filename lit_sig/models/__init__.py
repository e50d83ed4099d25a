"""Models: the family adapters (Hugging Face classifiers and causal LMs), their shared pieces, the embedded SST-2 model.

`hf_classifier` wraps any Hugging Face PyTorch sequence classifier for LIT and
`causal_lm` any causal LM (with `lm_encoding`, its prompts and targets, and
`lm_score`, the target's log-probability with the head at the targets only), both
built from pieces every family shares: `encoding` (tokenization), `forward` (the
pass at a precision), `padding` (how inputs of different lengths share a pass,
chosen at load), `device_path` and `rows` (the engine's rows on the device),
`backoff` (out-of-memory halving), `first_token` (a cheaper view of BERT-style
models), `layers` and `inside` (rows at a layer's hidden states, a neuron's
activation as the score) and `fields` (the LIT field names). `sst2_model`, `train_sst2`,
`datasets` and `weights/` are the embedded SST-2 model, its training and its data.
The public names are re-exported here, so `from lit_sig import models;
models.HFSequenceClassifier` works.
"""

from lit_sig.models.causal_lm import HFCausalLM
from lit_sig.models.class_score import GRAD_WRT_OPTIONS
from lit_sig.models.fields import LABEL_FIELD, POOLED_FIELD, embeddings_field, gradients_field, tokens_field
from lit_sig.models.forward import PRECISIONS, default_device
from lit_sig.models.hf_classifier import BASELINE_TOKENS, HFSequenceClassifier
from lit_sig.models.rows import DeviceRowBudget
from lit_sig.models.sst2_model import minilm_sst2

__all__ = [
    "BASELINE_TOKENS",
    "GRAD_WRT_OPTIONS",
    "LABEL_FIELD",
    "POOLED_FIELD",
    "PRECISIONS",
    "DeviceRowBudget",
    "HFCausalLM",
    "HFSequenceClassifier",
    "default_device",
    "embeddings_field",
    "gradients_field",
    "minilm_sst2",
    "tokens_field",
]
