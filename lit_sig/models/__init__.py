"""Models: the Hugging Face classifier wrapper (and its device path), the embedded SST-2 model.

`hf_classifier` wraps any Hugging Face PyTorch sequence classifier for LIT;
`sst2_model`, `train_sst2`, `datasets` and `weights/` are the embedded SST-2
model, its training and its data. The wrapper's public names are re-exported
here, so `from lit_sig import models; models.HFSequenceClassifier` works.
"""

from lit_sig.models.hf_classifier import (
    BASELINE_TOKENS,
    GRAD_WRT_OPTIONS,
    LABEL_FIELD,
    POOLED_FIELD,
    PRECISIONS,
    DeviceRowBudget,
    HFSequenceClassifier,
    default_device,
    embeddings_field,
    gradients_field,
    minilm_sst2,
    tokens_field,
)

__all__ = [
    "BASELINE_TOKENS",
    "GRAD_WRT_OPTIONS",
    "LABEL_FIELD",
    "POOLED_FIELD",
    "PRECISIONS",
    "DeviceRowBudget",
    "HFSequenceClassifier",
    "default_device",
    "embeddings_field",
    "gradients_field",
    "minilm_sst2",
    "tokens_field",
]
