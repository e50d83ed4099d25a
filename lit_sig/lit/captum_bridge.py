"""captum's attribution methods as LIT interpreters, on the model's device path.

Each `CaptumInterpreter` explains the word tokens of a model that offers the
device path (`lit_sig.lit.protocol.DevicePathModel`) and `forward_rows`: the forward
function captum sees maps word-embedding rows `[N, T, D]`, built on the model's
device, to the explained score `[N]` (the logit of the class to explain by
default; tokens that never move, such as [CLS]/[SEP], a causal LM's BOS and chat-template
markers (`PathInput.movable`), keep their own embeddings and get 0, as in IG and SIG). captum then
batches its rows itself (`internal_batch_size`, `perturbations_per_eval`) on that
device; nothing goes through per-row `predict` calls.

Gradient methods give per-dimension attributions, summed over the embedding
for each token. Perturbation methods use one feature per word token (captum's
`feature_mask`), so a token's salience is its feature's attribution.

`Layer` and `Neuron` work as for lit_sig's methods: at layer L the forward
function maps rows of layer L's states at every position ([CLS]/[SEP] included)
to the score; with a neuron, the score is that unit's activation.
"""

import dataclasses
import threading
from typing import Any

import numpy as np
import torch
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.core import cancellation
from lit_sig.lit import fields as fields_lib
from lit_sig.lit import inside, interpreters, protocol
from lit_sig.lit.captum_methods import METHODS, SEED_KEY, Target
from lit_sig.lit.config import LAYER_PARAM, NEURON_PARAM, Param

JsonDict = lit_types.JsonDict
# captum's samplers draw from torch's and numpy's global generators: one seeded sampler at a time.
_SAMPLING_LOCK = threading.Lock()


class CaptumInterpreter(lit_components.Interpreter):
    """One captum method as a LIT interpreter (see the module docstring)."""

    def __init__(self, method: str, autorun: bool = False, normalize: bool = True, baseline: str | None = None):
        """`baseline`: the default of the Baseline key; None: the model's own default where it has one
        (`protocol.DEFAULT_BASELINE_ATTR`), else `interpreters.DEFAULT_BASELINE`."""
        if method not in METHODS:
            raise ValueError(f"Unknown captum method {method!r}; accepted: {list(METHODS)}.")
        self.method = METHODS[method]
        self._autorun = autorun
        self._defaults = {
            interpreters.CLASS_KEY: "",
            interpreters.BASELINE_KEY: baseline or interpreters.DEFAULT_BASELINE,
            interpreters.NORMALIZATION_KEY: normalize,
            LAYER_PARAM.key: LAYER_PARAM.default,
            NEURON_PARAM.key: NEURON_PARAM.default,
        }
        self._defaults |= {p.key: p.default for p in self.method.params}
        self._baseline_given = baseline is not None
        self.parse_config({})  # Fail early on bad defaults.

    def description(self) -> str:
        return f"captum {self.method.name}: {self.method.description}"

    def parse_config(self, config: JsonDict | None) -> dict[str, Any]:
        """Validates `config` over the defaults; raises ValueError naming accepted values."""
        config = dict(config or {})
        unknown = sorted(set(config) - set(self._defaults))
        if unknown:
            raise ValueError(f"Unknown config key(s) {unknown}; accepted: {list(self._defaults)}.")
        merged = self._defaults | config
        baseline = merged[interpreters.BASELINE_KEY]
        if baseline not in interpreters.BASELINES:
            raise ValueError(
                f"Unknown {interpreters.BASELINE_KEY} {baseline!r}; accepted: {', '.join(interpreters.BASELINES)}."
            )
        settings = {p.key: p.parse(merged[p.key]) for p in (*self.method.params, LAYER_PARAM, NEURON_PARAM)}
        settings[interpreters.NORMALIZATION_KEY] = Param(interpreters.NORMALIZATION_KEY, True).parse(
            merged[interpreters.NORMALIZATION_KEY]
        )
        class_to_explain = merged[interpreters.CLASS_KEY]
        class_to_explain = "" if class_to_explain is None else class_to_explain
        if not isinstance(class_to_explain, str):  # 0, false and [] are not "no class".
            raise ValueError(f"{interpreters.CLASS_KEY!r} must be a class name string, got {class_to_explain!r}.")
        return settings | {interpreters.CLASS_KEY: class_to_explain.strip(), interpreters.BASELINE_KEY: baseline}

    def config_spec(self) -> lit_types.Spec:
        d = self._defaults
        spec: lit_types.Spec = {
            interpreters.CLASS_KEY: lit_types.TextSegment(required=False, default=d[interpreters.CLASS_KEY]),
            interpreters.BASELINE_KEY: lit_types.CategoryLabel(
                required=False, vocab=list(interpreters.BASELINES), default=d[interpreters.BASELINE_KEY]
            ),
            interpreters.NORMALIZATION_KEY: lit_types.Boolean(
                required=False, default=d[interpreters.NORMALIZATION_KEY]
            ),
        }
        params = (*self.method.params, LAYER_PARAM, NEURON_PARAM)
        return spec | {p.key: dataclasses.replace(p, default=d[p.key]).lit_type() for p in params}

    def meta_spec(self) -> lit_types.Spec:
        return {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=self.method.signed)}

    def rows_per_token_and_input(self, config: JsonDict | None) -> tuple[int, int]:
        """Model rows of one input of T tokens: T x per_token + per_input (validates `config`)."""
        return self.method.cost(self.parse_config(config))

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return _forward_model(model) is not None and bool(interpreters.find_grad_fields(model, need_input_embs=True))

    def run(
        self,
        inputs: list[JsonDict],
        model: lit_model.Model,
        dataset: lit_dataset.Dataset | None = None,
        model_outputs: list[JsonDict] | None = None,
        config: JsonDict | None = None,
    ) -> list[JsonDict]:
        """Explains each input with the captum method on the model's device."""
        del dataset, model_outputs
        settings = self.parse_config(config)
        device_model = _forward_model(model)
        fields = interpreters.find_grad_fields(model, need_input_embs=True)
        if device_model is None or not fields:
            raise ValueError(
                f"captum {self.method.name} needs a model with the device path and `forward_rows`"
                " (lit_sig.models.HFSequenceClassifier has both; see lit_sig/lit/protocol.py)."
            )
        requested = interpreters.requested_class(model, fields[0].grad_key, settings[interpreters.CLASS_KEY])
        prepared = device_model.path_inputs(inputs, [requested] * len(inputs), [f.embs for f in fields])
        explicit = self._baseline_given or interpreters.BASELINE_KEY in (config or {})
        kind = fields_lib.resolve_baseline(model, settings[interpreters.BASELINE_KEY], explicit)
        baselines = [
            interpreters.baseline_embeddings(model, fields, kind, [len(t) for t in p.tokens], p.x) for p in prepared
        ]
        layer, neuron = settings[LAYER_PARAM.key], settings[NEURON_PARAM.key]
        if prepared and (layer is not None or neuron is not None):
            prepared, baselines = zip(*inside.rekey(model, prepared, baselines, layer, neuron))
        return [self._explain(device_model, fields, p, b, settings) for p, b in zip(prepared, baselines)]

    def _explain(
        self,
        device_model: Any,
        fields: list[interpreters.GradField],
        prepared: protocol.PathInput,
        baseline: torch.Tensor,
        settings: dict[str, Any],
    ) -> JsonDict:
        """One input: captum sees its movable tokens only (`PathInput.movable`; all where None)."""
        T, D = prepared.x.shape
        movable = prepared.movable
        if movable is None:
            movable = torch.ones(T, dtype=torch.bool, device=prepared.x.device)  # [T]
        M = int(movable.sum())
        scores = torch.zeros(T, dtype=torch.float64)  # [T]
        if M:
            target = Target(
                forward=_MovableForward(device_model, prepared, movable),
                x=prepared.x[movable][None],
                baseline=baseline[movable][None],
                feature_mask=torch.arange(M, device=prepared.x.device)[None, :, None].expand(1, M, D),
                rows_per_pass=device_model.rows_per_pass(T, True),
            )
            attributions = self._attribute(target, settings)[0].detach()  # [M, D]
            moved = attributions[:, 0] if self.method.per_token else attributions.sum(-1)  # [M]
            scores[movable.cpu()] = moved.double().cpu()
        return interpreters.scores_to_salience(
            fields, prepared.tokens, scores.numpy(), settings[interpreters.NORMALIZATION_KEY]
        )

    def _attribute(self, target: Target, settings: dict[str, Any]) -> torch.Tensor:
        if self.method.name == "KernelShap" and target.x.shape[1] == 1:
            # captum's sampler has no coalition to draw from one feature; its Shapley value is F(x) - F(b).
            return METHODS["FeatureAblation"].attribute(target, settings)
        if not self.method.sampled:
            return self.method.attribute(target, settings)
        with _SAMPLING_LOCK, torch.random.fork_rng(devices=_cuda_devices(target.x)):
            numpy_state = np.random.get_state()
            try:
                torch.manual_seed(settings[SEED_KEY])
                np.random.seed(settings[SEED_KEY])
                return self.method.attribute(target, settings)
            finally:
                np.random.set_state(numpy_state)


class _MovableForward:
    """captum's forward function: rows of the movable tokens `[N, M, D]` -> scores `[N]`, the other
    tokens at their input embeddings."""

    def __init__(self, device_model: Any, prepared: protocol.PathInput, movable: torch.Tensor):
        self._model, self._prepared, self._movable = device_model, prepared, movable
        self._all = bool(movable.all())

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        cancellation.check()  # A server's deadline or departed client stops captum too.
        if not self._all:
            full = self._prepared.x.to(rows.dtype).expand(len(rows), -1, -1).clone()  # [N, T, D]
            full[:, self._movable] = rows
            rows = full
        return self._model.forward_rows([(self._prepared, rows)])[0]


def _cuda_devices(x: torch.Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def _forward_model(model: lit_model.Model) -> Any | None:
    device_model = protocol.find_device_path(model)
    return device_model if device_model is not None and hasattr(device_model, "forward_rows") else None
