"""The LIT specs of a text classifier, and its `predict` pass brought to the host in one go."""

from collections.abc import Sequence

import numpy as np
import torch
from lit_nlp.api import types as lit_types

from lit_sig.lit import protocol
from lit_sig.models.fields import (
    LABEL_FIELD,
    POOLED_FIELD,
    TRUNCATED_FIELD,
    attention_field,
    embeddings_field,
    gradients_field,
    tokens_field,
)


def input_spec(text_fields: Sequence[str], labels: Sequence[str] | None) -> lit_types.Spec:
    """Text segments, an optional label (the class to explain), optional word embeddings per segment."""
    spec: lit_types.Spec = {f: lit_types.TextSegment() for f in text_fields}
    if labels is None:
        spec[LABEL_FIELD] = lit_types.Scalar(required=False)
    else:
        spec[LABEL_FIELD] = lit_types.CategoryLabel(vocab=list(labels), required=False)
    for f in text_fields:
        spec[embeddings_field(f)] = lit_types.TokenEmbeddings(align=tokens_field(f), required=False)
    return spec


def output_spec(text_fields: Sequence[str], labels: Sequence[str] | None, attention_layers: int) -> lit_types.Spec:
    """Per segment tokens, embeddings and gradients; predictions; the target score; `attention_layers` heads."""
    grad_key = LABEL_FIELD if labels is not None else None
    spec: lit_types.Spec = {}
    for f in text_fields:
        spec[tokens_field(f)] = lit_types.Tokens(parent=f)
        spec[embeddings_field(f)] = lit_types.TokenEmbeddings(align=tokens_field(f))
        spec[gradients_field(f)] = lit_types.TokenGradients(
            align=tokens_field(f), grad_for=embeddings_field(f), grad_target_field_key=grad_key
        )
    if labels is None:
        spec["score"] = lit_types.RegressionScore(parent=LABEL_FIELD)
    else:
        spec["probas"] = lit_types.MulticlassPreds(
            vocab=list(labels), parent=LABEL_FIELD, null_idx=0 if len(labels) == 2 else None
        )
        spec[LABEL_FIELD] = lit_types.CategoryLabel(vocab=list(labels), required=False)
    spec[protocol.TARGET_SCORE_FIELD] = lit_types.Scalar()
    spec[POOLED_FIELD] = lit_types.Embeddings()
    spec[TRUNCATED_FIELD] = lit_types.Boolean()
    if attention_layers:
        spec["tokens"] = lit_types.Tokens()
        for layer in range(attention_layers):
            spec[attention_field(layer + 1)] = lit_types.AttentionHeads(align_in="tokens", align_out="tokens")
    return spec


class PredictArrays:
    """A `predict` pass's tensors, brought to the host once: `[B, ...]` numpy arrays."""

    def __init__(self, **arrays: np.ndarray | list[np.ndarray] | None) -> None:
        self.__dict__.update(arrays)

    @classmethod
    def of(
        cls,
        embs: torch.Tensor,
        grads: torch.Tensor,
        logits: torch.Tensor,
        target: torch.Tensor,
        pooled: torch.Tensor,
        attentions: Sequence[torch.Tensor] | None,
        with_attentions: bool,
    ) -> "PredictArrays":
        return cls(
            embs=embs.detach().float().cpu().numpy(),  # [B, L, D]
            grads=grads.float().cpu().numpy(),  # [B, L, D]
            logits=logits.detach().cpu().numpy(),  # [B, C]
            target=target.detach().cpu().numpy(),  # [B]
            pooled=pooled.detach().float().cpu().numpy(),  # [B, H]
            attentions=[a.detach().float().cpu().numpy() for a in attentions] if with_attentions else None,
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), -1).numpy()
