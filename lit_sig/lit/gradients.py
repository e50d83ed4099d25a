"""The plumbing of interpreters that read one model pass's gradients (Gradient Norm, Gradient x Input)."""

import torch
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import config as config_lib
from lit_sig.lit import fields as fields_lib

JsonDict = lit_types.JsonDict


class GradientInterpreter(lit_components.Interpreter):
    """Salience from the `TokenGradients` of `predict`; subclasses say how (`_token_scores`)."""

    signed = True

    def __init__(self, autorun: bool = True, normalize: bool = True):
        self._autorun = autorun
        self._schema = config_lib.Schema(config_lib.GradientSettings, {"normalize": normalize}, {})
        self._schema.parse({})  # Fail early on bad defaults.

    def _token_scores(self, output: JsonDict, field: fields_lib.GradField) -> torch.Tensor:
        """`[T]` salience of one field's tokens from one model output."""
        raise NotImplementedError

    def run(
        self,
        inputs: list[JsonDict],
        model: lit_model.Model,
        dataset: lit_dataset.Dataset | None = None,
        model_outputs: list[JsonDict] | None = None,
        config: JsonDict | None = None,
    ) -> list[JsonDict]:
        del dataset
        settings = self._schema.parse(config)
        fields = fields_lib.find_grad_fields(model, need_input_embs=False)
        if not fields:
            raise ValueError(f"{type(self).__name__}: the model has no usable TokenGradients field.")
        if model_outputs is None:
            model_outputs = list(model.predict(inputs))
        results = []
        for output in model_outputs:
            result = {}
            for f in fields:
                scores = self._token_scores(output, f).numpy()
                result.update(fields_lib.scores_to_salience([f], [output[f.tokens]], scores, settings.normalize))
            results.append(result)
        return results

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return bool(fields_lib.find_grad_fields(model, need_input_embs=False))

    def config_spec(self) -> lit_types.Spec:
        return self._schema.spec()

    def meta_spec(self) -> lit_types.Spec:
        return {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=self.signed)}
