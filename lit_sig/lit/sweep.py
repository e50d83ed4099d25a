"""A layer sweep: each token's salience at every layer of a model, in one call, and its heatmap.

    sweep = lit_sig.layer_sweep(model, {"sentence": "not bad at all"})
    sweep.plot().savefig("layers.png")  # tokens x layers: where in depth the decision forms

Each layer is one run of the interpreter with `Layer` set (exact SIG by default: each
position's state at that layer replaced by the baseline input's, T + 3 forward rows
that run only the layers above), plus the word embeddings as today. At the embeddings
[CLS]/[SEP] stay fixed, so their salience there is 0.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from lit_nlp.api import components as lit_components
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import fields as fields_lib
from lit_sig.lit import inside, interpreters, protocol
from lit_sig.lit.config import EMBEDDINGS_LAYER, LAYER_KEY, METHOD_KEY, NORMALIZATION_KEY
from lit_sig.render import plot_layers


@dataclasses.dataclass
class LayerSweep:
    """Salience of every token at every layer.

    Attributes:
        tokens: the `[T]` tokens of the whole sequence, [CLS]/[SEP] included (fields in order).
        layers: the `[M]` layers, lowest first: "embeddings", "0", ..., "N".
        salience: `[M, T]` salience (as the interpreter gives it; raw unless the config normalizes).
        completeness_deltas: `[M]` each run's completeness delta (None where unmeasured).
    """

    tokens: list[str]
    layers: list[str]
    salience: np.ndarray
    completeness_deltas: list[float | None]

    def plot(self, title: str | None = None, scale: str = "all") -> Any:
        """The tokens x layers heatmap (`lit_sig.plot_layers`)."""
        return plot_layers(self.tokens, self.layers, self.salience, title=title, scale=scale)


def layer_sweep(
    model: lit_model.Model,
    example: lit_types.JsonDict,
    interpreter: lit_components.Interpreter | None = None,
    config: lit_types.JsonDict | None = None,
    layers: Sequence[int] | None = None,
) -> LayerSweep:
    """Each token's salience at the word embeddings and at every layer (or at `layers`).

    Args:
        model: a model that explains inside itself (`protocol.InsideModel`, e.g. HFSequenceClassifier).
        example: one input.
        interpreter: lit_sig's IG, SIG, Gradient Norm or Gradient x Input, or a captum method;
            default: SIG with `Integration method: exact`.
        config: its config (any `Layer` is set per run); salience is raw unless it asks to normalize.
        layers: the layer numbers to sweep (default: all, 0..N).

    Raises:
        ValueError: a model without layers to enter, or a bad config or layer.
    """
    num_layers = protocol.find_capability(model, protocol.NUM_LAYERS_METHOD)
    if num_layers is None:
        inside.inside_model(model)  # Raises: the model doesn't explain inside itself.
    count = num_layers()
    if count is None:
        inside.inside_model(model)([], None, 0, None)  # Raises the model's reason.
        raise AssertionError("a model without layers accepted layer 0")
    if interpreter is None:
        interpreter = interpreters.SequentialIntegratedGradients()
        config = {METHOD_KEY: interpreters.EXACT_METHOD, **(config or {})}
    config = {NORMALIZATION_KEY: False, **(config or {})}
    chosen = list(range(count + 1)) if layers is None else list(layers)
    fields = [f.grad for f in fields_lib.find_grad_fields(model, need_input_embs=False)]
    rows: dict[str, tuple[list[str], np.ndarray, float | None]] = {}
    for layer in [EMBEDDINGS_LAYER, *chosen]:
        result = interpreter.run([example], model, None, config={**config, LAYER_KEY: layer})[0]
        tokens = [t for f in fields for t in result[f].tokens]
        scores = np.concatenate([np.asarray(result[f].salience, dtype=np.float64) for f in fields])
        rows[str(layer)] = (tokens, scores, result.get(interpreters.COMPLETENESS_KEY))
    sequence = rows[str(chosen[0])][0] if chosen else rows[EMBEDDINGS_LAYER][0]
    salience = [_aligned(sequence, *rows[name][:2]) for name in rows]
    return LayerSweep(sequence, list(rows), np.stack(salience), [rows[name][2] for name in rows])


def _aligned(sequence: list[str], tokens: list[str], scores: np.ndarray) -> np.ndarray:
    """`[T]` scores of `tokens` (a subsequence of `sequence`: the word tokens) at their places, 0 elsewhere."""
    aligned, start = np.zeros(len(sequence)), 0
    for token, score in zip(tokens, scores):
        while sequence[start] != token:
            start += 1
        aligned[start] = score
        start += 1
    return aligned
