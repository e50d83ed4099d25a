"""The generic path: IG/SIG rows of any LIT model, scored through its `predict`.

For models without the device path (`lit_sig.lit.protocol.DevicePathModel`): x
comes from the model's `TokenEmbeddings` output, and every row becomes one input
dict whose embeddings field holds the row, on the CPU.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import fields as fields_lib
from lit_sig.lit import protocol

JsonDict = lit_types.JsonDict
# Rows of one `predict` call: bounds memory by the call, not T * n.
MAX_ELEMENTS = 1 << 24  # rows * T * D floats, 64 MB of float32 per tensor


@dataclasses.dataclass(eq=False)
class PredictInput(protocol.PathInput):
    """A `PathInput` plus what turns rows of it into LIT inputs."""

    template: JsonDict = None  # The example, with the class to explain.
    fields: list[fields_lib.GradField] = None
    lengths: list[int] = None  # Tokens per field.


def predict_inputs(
    fields: list[fields_lib.GradField],
    inputs: Sequence[JsonDict],
    outputs: Sequence[JsonDict],
    requested: str | None,
    has_score: bool,
) -> list[PredictInput]:
    """Each input's x from its model output; its score at x where the output is for the explained class."""
    return [_predict_input(fields, e, o, requested, has_score) for e, o in zip(inputs, outputs)]


def _predict_input(
    fields: list[fields_lib.GradField],
    example: JsonDict,
    output: JsonDict,
    requested: str | None,
    has_score: bool,
) -> PredictInput:
    grad_key = fields[0].grad_key
    grad_class = requested
    if grad_key is not None and requested is None:
        value = output.get(grad_key, example.get(grad_key))
        grad_class = None if value in (None, "") else value
    xs = [np.asarray(output[f.embs], dtype=np.float32) for f in fields]  # each [T_f, D]
    if len({x.shape[-1] for x in xs}) > 1:
        raise ValueError("Segments with different embedding sizes can't be explained together.")
    template = {k: v for k, v in example.items() if k not in ("_id", "_meta")}
    if grad_key is not None:
        template[grad_key] = grad_class
    # The model output is x's own score when it is for the same class.
    input_score = None
    if has_score and (grad_key is None or output.get(grad_key) == grad_class):
        input_score = torch.tensor(float(output[protocol.TARGET_SCORE_FIELD]), dtype=torch.float64)
    return PredictInput(
        tokens=[list(output[f.tokens]) for f in fields],
        x=torch.from_numpy(np.concatenate(xs)),
        target=grad_class,
        input_score=input_score,
        template=template,
        fields=fields,
        lengths=[len(x) for x in xs],
    )


class PredictScorer:
    """`engine.RowScorer` over a LIT model's `predict`: one input dict per row, on the CPU."""

    device = torch.device("cpu")

    def __init__(self, model: lit_model.Model, emb_dim: int):
        self._model = model
        self._emb_dim = emb_dim
        self._has_score = protocol.TARGET_SCORE_FIELD in model.output_spec()

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        del with_grads
        return max(1, MAX_ELEMENTS // max(1, num_tokens * self._emb_dim))

    def score_rows(
        self, pieces: Sequence[tuple[PredictInput, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        batch = []
        for key, rows in pieces:
            parts = torch.split(rows.float(), key.lengths, dim=1)  # each [r, T_f, D]
            batch += [
                dict(key.template, **{f.embs: part[r].numpy() for f, part in zip(key.fields, parts)})
                for r in range(len(rows))
            ]
        outputs = list(self._model.predict(batch))
        results, offset = [], 0
        for key, rows in pieces:
            mine = outputs[offset : offset + len(rows)]
            offset += len(rows)
            scores = torch.tensor(
                [o[protocol.TARGET_SCORE_FIELD] if self._has_score else math.nan for o in mine]
            )  # [r]
            grads = None
            if with_grads:
                grads = torch.from_numpy(
                    np.stack([np.concatenate([o[f.grad] for f in key.fields]) for o in mine])
                )  # [r, T, D]
            results.append((scores, grads))
        return results
