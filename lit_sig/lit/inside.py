"""`Layer` and `Neuron` for the interpreters: path inputs re-keyed by the model (`protocol.InsideModel`)."""

from collections.abc import Sequence
from typing import Any

import torch
from lit_nlp.api import model as lit_model

from lit_sig.lit import protocol
from lit_sig.lit.config import EMBEDDINGS_LAYER, LAYER_KEY, NEURON_KEY


def inside_model(model: lit_model.Model) -> Any:
    """The model's `inside_path_inputs` (found through LIT's wrappers); ValueError if it has none."""
    found = protocol.find_capability(model, protocol.INSIDE_METHOD)
    if found is None:
        raise ValueError(
            f"{LAYER_KEY} and {NEURON_KEY} need a model that explains inside itself (lit_sig's"
            f" HFSequenceClassifier does; see lit_sig/lit/protocol.py); for this model accepted: {LAYER_KEY}"
            f" {EMBEDDINGS_LAYER!r} and an empty {NEURON_KEY}."
        )
    return found


def rekey(
    model: lit_model.Model,
    prepared: Sequence[protocol.PathInput],
    baselines: Sequence[torch.Tensor] | None,
    layer: int | None,
    neuron: protocol.Neuron | None,
) -> list[tuple[protocol.PathInput, torch.Tensor | None]]:
    """Per input: re-keyed for the layer and neuron (x at the layer, F the neuron's), and its baseline there."""
    return inside_model(model)(list(prepared), None if baselines is None else list(baselines), layer, neuron)


def moving_at_layer(key: protocol.PathInput) -> torch.Tensor:
    """`[T]` bool: the positions that move at a layer: every one, [CLS]/[SEP] included (captum's
    convention), but those the model marks as unable to change its score (`PathInput.movable`)."""
    if key.movable is not None:
        return key.movable
    return torch.ones(key.x.shape[0], dtype=torch.bool, device=key.x.device)
