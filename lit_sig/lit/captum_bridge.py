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
import functools
import threading
from collections.abc import Callable
from typing import Any

import captum.attr
import numpy as np
import torch
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.core import attribution, cancellation, engine, quadrature
from lit_sig.lit import fields as fields_lib
from lit_sig.lit import inside, interpreters, protocol
from lit_sig.lit.config import LAYER_PARAM, NEURON_PARAM, Param

JsonDict = lit_types.JsonDict
ForwardFn = Callable[[torch.Tensor], torch.Tensor]  # [N, T, D] -> [N]
SEED_KEY = "seed"
# captum's samplers draw from torch's and numpy's global generators: one seeded sampler at a time.
_SAMPLING_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Target:
    """What one attribution call gets: the forward function, the input and its baseline."""

    forward: ForwardFn
    x: torch.Tensor  # [1, T, D] word-token embeddings, on the device
    baseline: torch.Tensor  # [1, T, D]
    feature_mask: torch.Tensor  # [1, T, D] long: the token index of every element
    rows_per_pass: int  # Rows captum should put in one forward call.


@dataclasses.dataclass(frozen=True)
class CaptumMethod:
    """A captum method, its parameters, and how its attributions become token salience.

    `cost(settings)` gives the model rows an input of T tokens costs (T x per token + per input);
    `attribute(target, settings)` returns `[1, T, D]` attributions.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    cost: Callable[[dict[str, Any]], tuple[int, int]]  # settings -> model rows (per token, per input)
    attribute: Callable[[Target, dict[str, Any]], torch.Tensor]
    per_token: bool = False  # One feature per token: salience = the feature's attribution.
    sampled: bool = False  # Draws random numbers: seeded, one at a time.
    signed: bool = True


def _seed_param() -> Param:
    return Param(SEED_KEY, 0, 0, 2**31 - 1)


class _ForwardScorer:
    """`engine.RowScorer` over a forward function: rows of one pass -> scores and their gradients."""

    def __init__(self, forward_func: ForwardFn, rows_per_pass: int, device: torch.device):
        self._forward, self._rows, self.device = forward_func, rows_per_pass, device

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        del num_tokens, with_grads
        return self._rows

    def score_rows(
        self, pieces: list[tuple[None, torch.Tensor]], with_grads: bool
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        rows = torch.cat([r for _, r in pieces]).detach().requires_grad_(with_grads)  # [R, T, D]
        with torch.enable_grad() if with_grads else torch.no_grad():
            scores = self._forward(rows)  # [R]
            grads = torch.autograd.grad(scores.sum(), rows)[0] if with_grads else None
        bounds = np.cumsum([0] + [len(r) for _, r in pieces])
        return [(scores[a:b].detach(), None if grads is None else grads[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class _TokenSIG(captum.attr.GradientAttribution):
    """SIG as a captum attribution (for `NoiseTunnel`): lit_sig's path engine on a forward function."""

    def __init__(self, forward_func: ForwardFn, rows_per_pass: int):
        super().__init__(forward_func)
        self._rows = rows_per_pass

    @functools.wraps(lambda self, inputs, **kwargs: None)
    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, n_steps: int = 50) -> torch.Tensor:
        """`[B, T, D]` SIG attributions of `inputs` from `baselines` (`[1 or B, T, D]`)."""
        if isinstance(baselines, tuple):  # NoiseTunnel passes captum's formatted (tuple) baselines.
            (baselines,) = baselines
        baselines = baselines.expand_as(inputs)  # [B, T, D]
        alphas, weights = quadrature.quadrature("gausslegendre", n_steps)
        scorer = _ForwardScorer(self.forward_func, self._rows, inputs.device)
        groups = attribution.sig_groups(torch.ones(inputs.shape[1], dtype=torch.bool, device=inputs.device))
        problems = [engine.PathProblem(None, x, b, groups) for x, b in zip(inputs, baselines)]
        results = engine.path_attributions(
            problems, scorer, alphas, weights, measure_completeness=False, keep_dimensions=True
        )
        return torch.stack([r.attributions for r in results]).to(inputs.device)


_TokenSIG.attribute.__wrapped__ = _TokenSIG.attribute  # NoiseTunnel calls `attribute.__wrapped__`.


def _noise_tunnel_params() -> tuple[Param, ...]:
    return (
        Param("nt_type", "smoothgrad", choices=("smoothgrad", "smoothgrad_sq", "vargrad")),
        Param("nt_samples", 5, 1, 100),
        Param("stdevs", 0.01, 0.0, 10.0),
        Param("n_steps", 50, 1, 500),
        _seed_param(),
    )


def _noise_tunnel(method: captum.attr.Attribution, t: Target, s: dict[str, Any], **kwargs) -> torch.Tensor:
    return captum.attr.NoiseTunnel(method).attribute(
        t.x,
        nt_type=s["nt_type"],
        nt_samples=s["nt_samples"],
        nt_samples_batch_size=1,
        stdevs=s["stdevs"],
        baselines=t.baseline,
        n_steps=s["n_steps"],
        **kwargs,
    )


def _surrogate(method: type[captum.attr.Attribution]) -> Callable[[Target, dict[str, Any]], torch.Tensor]:
    """KernelShap and Lime: a model fit on `n_samples` random subsets of the tokens at the baseline."""
    return lambda t, s: method(t.forward).attribute(
        t.x,
        baselines=t.baseline,
        feature_mask=t.feature_mask,
        n_samples=s["n_samples"],
        perturbations_per_eval=t.rows_per_pass,
    )


def _occlusion(t: Target, window: int) -> torch.Tensor:
    """captum's Occlusion with windows of `window` tokens; ValueError for a window wider than the input."""
    if window > t.x.shape[1]:
        raise ValueError(f"'sliding_window_shapes' is {window}, wider than this input's {t.x.shape[1]} word tokens.")
    return captum.attr.Occlusion(t.forward).attribute(
        t.x,
        sliding_window_shapes=(window, t.x.shape[-1]),
        strides=(1, t.x.shape[-1]),
        baselines=t.baseline,
        perturbations_per_eval=t.rows_per_pass,
    )


METHODS: dict[str, CaptumMethod] = {
    m.name: m
    for m in (
        CaptumMethod(
            "Saliency",
            "|gradient| (abs) or the gradient, summed over the embedding: 1 backward pass.",
            (Param("abs", True),),
            lambda s: (0, 1),
            lambda t, s: captum.attr.Saliency(t.forward).attribute(t.x, abs=s["abs"]),
        ),
        CaptumMethod(
            "InputXGradient",
            "gradient x input, summed over the embedding (= lit_sig Gradient x Input).",
            (),
            lambda s: (0, 1),
            lambda t, s: captum.attr.InputXGradient(t.forward).attribute(t.x),
        ),
        CaptumMethod(
            "GradientShap",
            "expected gradients from the baseline with Gaussian noise: n_samples passes.",
            (Param("n_samples", 5, 1, 500), Param("stdevs", 0.0, 0.0, 10.0), _seed_param()),
            lambda s: (0, s["n_samples"]),
            lambda t, s: captum.attr.GradientShap(t.forward).attribute(
                t.x, baselines=t.baseline, n_samples=s["n_samples"], stdevs=s["stdevs"]
            ),
            sampled=True,
        ),
        CaptumMethod(
            "NoiseTunnel IG",
            "SmoothGrad-style average of IG over noisy inputs: nt_samples x n_steps passes.",
            _noise_tunnel_params(),
            lambda s: (0, s["nt_samples"] * s["n_steps"]),
            lambda t, s: _noise_tunnel(
                captum.attr.IntegratedGradients(t.forward), t, s, internal_batch_size=t.rows_per_pass
            ),
            sampled=True,
        ),
        CaptumMethod(
            "NoiseTunnel SIG",
            "SmoothGrad-style average of SIG over noisy inputs: nt_samples x T x n_steps passes.",
            _noise_tunnel_params(),
            lambda s: (s["nt_samples"] * s["n_steps"], 0),
            lambda t, s: _noise_tunnel(_TokenSIG(t.forward, t.rows_per_pass), t, s),
            sampled=True,
        ),
        CaptumMethod(
            "FeatureAblation",
            "F(x) - F(x with the token at the baseline): T + 1 forward passes (= exact SIG).",
            (),
            lambda s: (1, 1),
            lambda t, s: captum.attr.FeatureAblation(t.forward).attribute(
                t.x, baselines=t.baseline, feature_mask=t.feature_mask, perturbations_per_eval=t.rows_per_pass
            ),
            per_token=True,
        ),
        CaptumMethod(
            "Occlusion",
            "mean occlusion of the windows of sliding_window_shapes tokens covering each token.",
            (Param("sliding_window_shapes", 1, 1, 16),),
            lambda s: (1, 1),
            lambda t, s: _occlusion(t, s["sliding_window_shapes"]),
            per_token=True,
        ),
        CaptumMethod(
            "KernelShap",
            "Shapley values by weighted regression over n_samples token coalitions.",
            (Param("n_samples", 100, 1, 5000), _seed_param()),
            lambda s: (0, s["n_samples"]),
            _surrogate(captum.attr.KernelShap),
            per_token=True,
            sampled=True,
        ),
        CaptumMethod(
            "Lime",
            "a sparse linear surrogate fit on n_samples random token subsets.",
            (Param("n_samples", 100, 1, 5000), _seed_param()),
            lambda s: (0, s["n_samples"]),
            _surrogate(captum.attr.Lime),
            per_token=True,
            sampled=True,
        ),
    )
}


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
