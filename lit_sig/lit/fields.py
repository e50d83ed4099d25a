"""What the interpreters read from a LIT model's specs, and how results go back into LIT types.

The fields are found as LIT's `gradient_maps.py` finds them: `TokenGradients`
aligned to `Tokens`, and (for IG and SIG) `TokenEmbeddings` in both the input
and output specs.
"""

import dataclasses
from typing import Any

import numpy as np
import torch
from absl import logging
from lit_nlp.api import dtypes
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.core import attribution
from lit_sig.lit import protocol

# Tokens that never move along a path, by their text, for models that don't say which (see
# `movable_tokens`): their baseline is themselves.
SPECIAL_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>", "<cls>", "<sep>", "<|endoftext|>"})


@dataclasses.dataclass(frozen=True)
class GradField:
    """One text segment's fields in a model's specs."""

    grad: str  # TokenGradients
    tokens: str  # Tokens it aligns to
    embs: str | None  # TokenEmbeddings it is the gradient for
    grad_key: str | None  # input field holding the class to explain


def find_grad_fields(model: lit_model.Model, need_input_embs: bool) -> list[GradField]:
    """The model's `TokenGradients` fields that lit_sig can interpret."""
    input_spec, output_spec = model.input_spec(), model.output_spec()
    fields = []
    for name, spec in output_spec.items():
        if not isinstance(spec, lit_types.TokenGradients):
            continue
        if not isinstance(output_spec.get(spec.align), lit_types.Tokens):
            logging.info("Skipping %s: it aligns to no Tokens field.", name)
            continue
        embs = spec.grad_for
        if not isinstance(output_spec.get(embs), lit_types.TokenEmbeddings):
            embs = None
        if need_input_embs and (embs is None or not isinstance(input_spec.get(embs), lit_types.TokenEmbeddings)):
            logging.info("Skipping %s: its embeddings can't be fed back.", name)
            continue
        grad_key = spec.grad_target_field_key
        fields.append(GradField(name, spec.align, embs, grad_key if grad_key in input_spec else None))
    return fields


def requested_class(model: lit_model.Model, grad_key: str | None, class_to_explain: str) -> str | None:
    """The class a config asks for (validated), or None for the input's label or prediction."""
    if grad_key is None:
        if class_to_explain:
            raise ValueError(f"The model has no class to explain (regression); got {class_to_explain!r}.")
        return None
    if not class_to_explain:
        return None
    vocab = getattr(model.input_spec()[grad_key], "vocab", None)
    if vocab and class_to_explain not in vocab:
        raise ValueError(f"Unknown class {class_to_explain!r} to explain; accepted: {list(vocab)}.")
    return class_to_explain


def resolve_baseline(model: lit_model.Model, kind: str, explicit: bool) -> str:
    """The baseline kind to use: `kind` if the caller chose it (`explicit`), else the model's own default
    (`protocol.DEFAULT_BASELINE_ATTR`, e.g. `zero` for a causal LM, which has no [MASK]) where it has one."""
    if explicit:
        return kind
    return protocol.find_capability(model, protocol.DEFAULT_BASELINE_ATTR) or kind


def baseline_embeddings(
    model: lit_model.Model, fields: list[GradField], kind: str, lengths: list[int], x: torch.Tensor
) -> torch.Tensor:
    """`[T, D]`: each field's `kind` baseline vector (see `config.BASELINES`), repeated over its `lengths` tokens."""
    find = protocol.find_capability(model, protocol.BASELINE_METHOD) if kind != "zero" else None
    parts = []
    for f, length in zip(fields, lengths):
        vector = find(f.embs, kind) if find is not None else None
        if vector is None:
            if kind != "zero":
                logging.warning("The model declares no %r baseline for %s; using zeros.", kind, f.embs)
            vector = np.zeros(x.shape[-1], dtype=np.float32)
        vector = torch.as_tensor(np.asarray(vector), dtype=x.dtype, device=x.device)  # [D]
        parts.append(vector.expand(length, -1))
    return torch.cat(parts)


def scores_to_salience(
    fields: list[GradField], tokens: list[list[str]], scores: np.ndarray, normalize: bool
) -> dict[str, Any]:
    """Splits `[T_total]` token scores over the fields (each with its `tokens`), in field order."""
    if normalize:
        scores = attribution.normalize(torch.from_numpy(scores)).numpy()
    result: dict[str, Any] = {}
    offset = 0
    for f, field_tokens in zip(fields, tokens):
        result[f.grad] = dtypes.TokenSalience(list(field_tokens), scores[offset : offset + len(field_tokens)])
        offset += len(field_tokens)
    assert offset == len(scores)
    return result


def movable_tokens(model: lit_model.Model, fields: list[GradField], prepared: protocol.PathInput) -> torch.Tensor:
    """`[T]` bool: which tokens of `prepared` move along a path.

    The model says: per position (`PathInput.movable`), else per field through
    `special_token_mask` (found through LIT's wrappers); else the tokens whose text is in
    `SPECIAL_TOKENS` stay fixed.
    """
    num_tokens, device = prepared.x.shape[0], prepared.x.device
    if prepared.movable is not None:
        movable = torch.as_tensor(prepared.movable, device=device)
        if movable.shape != (num_tokens,) or movable.dtype != torch.bool:
            raise ValueError(
                f"PathInput.movable must be a [{num_tokens}] bool tensor, got {movable.dtype} {movable.shape}."
            )
        return movable
    find = protocol.find_capability(model, protocol.SPECIAL_TOKEN_MASK_METHOD)
    flags = []
    for f, tokens in zip(fields, prepared.tokens):
        special = [t in SPECIAL_TOKENS for t in tokens] if find is None else [bool(s) for s in find(f.tokens, tokens)]
        if len(special) != len(tokens):
            raise ValueError(f"special_token_mask({f.tokens!r}) gave {len(special)} flags for {len(tokens)} tokens.")
        flags += [not s for s in special]
    return torch.tensor(flags, dtype=torch.bool, device=device)
