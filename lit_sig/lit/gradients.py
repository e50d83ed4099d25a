"""The plumbing of interpreters that read one pass's gradients (Gradient Norm, Gradient x Input).

By default they read the `TokenGradients` of `predict`. With `Layer` or `Neuron` set,
they ask the model's device path for the gradients instead: of the neuron's
activation, or with respect to the layer's states at every position (captum's
`LayerGradientXActivation` for Gradient x Input).
"""

import numpy as np
import torch
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.lit import config as config_lib
from lit_sig.lit import fields as fields_lib
from lit_sig.lit import inside, protocol

JsonDict = lit_types.JsonDict


class GradientInterpreter(lit_components.Interpreter):
    """Salience from one pass's gradients; subclasses say how (`_token_scores`)."""

    signed = True

    def __init__(self, autorun: bool = True, normalize: bool = True):
        self._autorun = autorun
        self._schema = config_lib.Schema(config_lib.GradientSettings, {"normalize": normalize}, {})
        self._schema.parse({})  # Fail early on bad defaults.

    def _token_scores(self, grads: torch.Tensor, embs: torch.Tensor | None, field: str) -> torch.Tensor:
        """`[T]` salience of one field's tokens from their `[T, D]` gradients and embeddings (or states)."""
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
        if config_lib.explains_inside(settings):
            return self._run_inside(inputs, model, settings)
        fields = fields_lib.find_grad_fields(model, need_input_embs=False)
        if not fields:
            raise ValueError(f"{type(self).__name__}: the model has no usable TokenGradients field.")
        if model_outputs is None:
            model_outputs = list(model.predict(inputs))
        results = []
        for output in model_outputs:
            result = {}
            for f in fields:
                grads = torch.as_tensor(np.asarray(output[f.grad]))  # [T, D]
                embs = None if f.embs is None else torch.as_tensor(np.asarray(output[f.embs]))  # [T, D]
                scores = self._token_scores(grads, embs, f.grad).numpy()
                result.update(fields_lib.scores_to_salience([f], [output[f.tokens]], scores, settings.normalize))
            results.append(result)
        return results

    def _run_inside(
        self, inputs: list[JsonDict], model: lit_model.Model, settings: config_lib.GradientSettings
    ) -> list[JsonDict]:
        """The gradients at `Layer` (of the `Neuron`), from the device path: one gradient row per input."""
        rekey = inside.inside_model(model)
        device_model = protocol.find_device_path(model)
        fields = fields_lib.find_grad_fields(model, need_input_embs=True)
        if device_model is None or not fields:
            raise ValueError(
                f"{type(self).__name__} with {config_lib.LAYER_KEY} or {config_lib.NEURON_KEY} needs the device"
                " path (lit_sig.lit.protocol.DevicePathModel) and TokenEmbeddings it can feed back."
            )
        if not inputs:
            return []
        prepared = device_model.path_inputs(inputs, [None] * len(inputs), [f.embs for f in fields])
        keys = [key for key, _ in rekey(prepared, None, settings.layer, settings.neuron)]
        results = []
        per_pass = max(1, device_model.rows_per_pass(max(len(k.x) for k in keys), True))
        for start in range(0, len(keys), per_pass):
            chunk = keys[start : start + per_pass]
            for key, (_, grads) in zip(chunk, device_model.score_rows([(k, k.x[None]) for k in chunk], True)):
                results.append(self._salience(fields, key, grads[0], settings))
        return results

    def _salience(
        self,
        fields: list[fields_lib.GradField],
        key: protocol.PathInput,
        grads: torch.Tensor,
        settings: config_lib.GradientSettings,
    ) -> JsonDict:
        """Each field's salience from the `[T, D]` gradients at x, fields normalized apart (as from `predict`)."""
        result, offset = {}, 0
        for f, tokens in zip(fields, key.tokens):
            span = slice(offset, offset + len(tokens))
            scores = self._token_scores(grads[span].float(), key.x[span].float(), f.grad).double().cpu().numpy()
            result.update(fields_lib.scores_to_salience([f], [tokens], scores, settings.normalize))
            offset += len(tokens)
        return result

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return bool(fields_lib.find_grad_fields(model, need_input_embs=False))

    def config_spec(self) -> lit_types.Spec:
        return self._schema.spec()

    def meta_spec(self) -> lit_types.Spec:
        return {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=self.signed)}
