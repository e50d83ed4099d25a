"""LIT `Interpreter` adapters over `lit_sig.core`.

They find their fields from the model's specs as LIT's `gradient_maps.py` does,
so they work with any LIT model that declares `TokenGradients` aligned to
`Tokens` and (for IG and SIG) `TokenEmbeddings` in both its input and output
specs. See `lit_sig.protocol` for the optional extras they use.
"""

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from absl import logging
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import dtypes
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig import protocol
from lit_sig.core import adaptive
from lit_sig.core import attribution
from lit_sig.core import quadrature

JsonDict = lit_types.JsonDict

CLASS_KEY = "Class to explain"
INTERPOLATION_KEY = "Interpolation steps"
METHOD_KEY = "Integration method"
BASELINE_KEY = "Baseline"
NORMALIZATION_KEY = "Normalize"
ADAPTIVE_KEY = "Adaptive steps"
TOLERANCE_KEY = "Tolerance"
MIN_TOLERANCE, MAX_TOLERANCE = 1e-7, 1.0

BASELINES = ("mask", "pad", "zero")
DEFAULT_STEPS = 50
DEFAULT_METHOD = "gausslegendre"
DEFAULT_BASELINE = "mask"
COMPLETENESS_KEY = "completeness_delta"
# Tokens that never move along a path: their baseline is themselves.
SPECIAL_TOKENS = frozenset(
    {"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>", "<cls>", "<sep>", "<|endoftext|>"}
)


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
        if need_input_embs and (
            embs is None or not isinstance(input_spec.get(embs), lit_types.TokenEmbeddings)
        ):
            logging.info("Skipping %s: its embeddings can't be fed back.", name)
            continue
        grad_key = spec.grad_target_field_key
        fields.append(GradField(name, spec.align, embs, grad_key if grad_key in input_spec else None))
    return fields


def _check_keys(config: JsonDict, accepted: list[str]) -> None:
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}; accepted: {accepted}.")


def _parse_bool(config: JsonDict, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{key!r} must be true or false, got {value!r}.")
    return bool(value)


def _scores_to_salience(
    fields: list[GradField], output: JsonDict, scores: np.ndarray, normalize: bool
) -> dict[str, Any]:
    """Splits `[T_total]` token scores over the fields, in field order."""
    if normalize:
        scores = attribution.normalize(torch.from_numpy(scores)).numpy()
    result: dict[str, Any] = {}
    offset = 0
    for f in fields:
        tokens = list(output[f.tokens])
        result[f.grad] = dtypes.TokenSalience(tokens, scores[offset : offset + len(tokens)])
        offset += len(tokens)
    assert offset == len(scores)
    return result


class _GradientInterpreter(lit_components.Interpreter):
    """Shared plumbing for interpreters of one model pass's gradients."""

    signed = True

    def __init__(self, autorun: bool = True, normalize: bool = True):
        self._autorun = autorun
        self._normalize = normalize

    def _token_scores(self, output: JsonDict, field: GradField) -> torch.Tensor:
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
        config = config or {}
        _check_keys(config, [NORMALIZATION_KEY])
        normalize = _parse_bool(config, NORMALIZATION_KEY, self._normalize)
        fields = find_grad_fields(model, need_input_embs=False)
        if not fields:
            raise ValueError(f"{type(self).__name__}: the model has no usable TokenGradients field.")
        if model_outputs is None:
            model_outputs = list(model.predict(inputs))
        results = []
        for output in model_outputs:
            result = {}
            for f in fields:
                scores = self._token_scores(output, f).numpy()
                result.update(_scores_to_salience([f], output, scores, normalize))
            results.append(result)
        return results

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return bool(find_grad_fields(model, need_input_embs=False))

    def config_spec(self) -> lit_types.Spec:
        return {NORMALIZATION_KEY: lit_types.Boolean(required=False, default=self._normalize)}

    def meta_spec(self) -> lit_types.Spec:
        return {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=self.signed)}


class GradientNorm(_GradientInterpreter):
    """Salience = L2 norm of each token's gradient."""

    signed = False

    def _token_scores(self, output: JsonDict, field: GradField) -> torch.Tensor:
        return attribution.gradient_norm(torch.as_tensor(np.asarray(output[field.grad])))



class GradientDotInput(_GradientInterpreter):
    """Salience = gradient . input embedding, per token."""

    def _token_scores(self, output: JsonDict, field: GradField) -> torch.Tensor:
        if field.embs is None:
            raise ValueError(f"{field.grad} declares no TokenEmbeddings output (grad_for).")
        grads = torch.as_tensor(np.asarray(output[field.grad]))  # [T, D]
        embs = torch.as_tensor(np.asarray(output[field.embs]))  # [T, D]
        return attribution.gradient_dot_input(grads, embs)

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return any(f.embs for f in find_grad_fields(model, need_input_embs=False))


@dataclasses.dataclass(frozen=True)
class PathSettings:
    """Validated IG/SIG config."""

    class_to_explain: str
    steps: int
    method: str
    baseline: str
    normalize: bool
    adaptive: bool
    tolerance: float


class _PathInterpreter(lit_components.Interpreter):
    """Shared plumbing of IG and SIG: config, fields, baselines, the model as `GradFn`."""

    def __init__(
        self,
        autorun: bool = False,
        class_key: str = "",
        interpolation_steps: int = DEFAULT_STEPS,
        integration_method: str = DEFAULT_METHOD,
        baseline: str = DEFAULT_BASELINE,
        normalize: bool = True,
        adaptive_steps: bool = False,
        tolerance: float = adaptive.DEFAULT_TOLERANCE,
        report_completeness: bool = True,
    ):
        """Defaults of the config keys, and whether results carry `completeness_delta`.

        LIT 1.3's salience module draws every key of a result as token
        salience, so servers pass `report_completeness=False`; the delta is
        then logged instead.
        """
        self._autorun = autorun
        self._report_completeness = report_completeness
        self._defaults = {
            CLASS_KEY: class_key,
            INTERPOLATION_KEY: interpolation_steps,
            METHOD_KEY: integration_method,
            BASELINE_KEY: baseline,
            NORMALIZATION_KEY: normalize,
            ADAPTIVE_KEY: adaptive_steps,
            TOLERANCE_KEY: tolerance,
        }
        self.parse_config({})  # Fail early on bad defaults.

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        """`[G, T]` bool: which of the `[T]` movable tokens move together."""
        raise NotImplementedError

    def _attribute(
        self, x: torch.Tensor, baseline: torch.Tensor, movable: torch.Tensor,
        grad_fn: attribution.GradFn, settings: PathSettings,
        input_eval: tuple[float, torch.Tensor] | None,
    ) -> attribution.PathAttribution:
        """`input_eval`: the model's `(score, grads [T, D])` at x for this class, if known."""
        groups = self._groups(movable)
        if settings.adaptive:
            return adaptive.adaptive_path_attribution(
                x, baseline, groups, grad_fn, settings.tolerance, input_eval=input_eval
            )
        alphas, weights = quadrature.quadrature(settings.method, settings.steps)
        input_score = None if input_eval is None else input_eval[0]
        return attribution.path_attribution(
            x, baseline, groups, grad_fn, alphas, weights, input_score=input_score
        )

    def parse_config(self, config: JsonDict | None) -> PathSettings:
        """Validates `config` over the defaults; raises ValueError naming accepted values."""
        config = dict(config or {})
        _check_keys(config, list(self._defaults))
        merged = {**self._defaults, **config}
        class_to_explain = merged[CLASS_KEY]
        if class_to_explain is None:
            class_to_explain = ""
        if not isinstance(class_to_explain, str):
            raise ValueError(f"{CLASS_KEY!r} must be a class name string, got {class_to_explain!r}.")
        method = merged[METHOD_KEY]
        if method not in quadrature.METHODS:
            raise ValueError(
                f"Unknown {METHOD_KEY} {method!r}; accepted: {', '.join(quadrature.METHODS)}."
            )
        baseline = merged[BASELINE_KEY]
        if baseline not in BASELINES:
            raise ValueError(f"Unknown {BASELINE_KEY} {baseline!r}; accepted: {', '.join(BASELINES)}.")
        steps = _parse_steps(merged[INTERPOLATION_KEY])
        quadrature.quadrature(method, steps)  # Validates the range for this method.
        normalize = _parse_bool(merged, NORMALIZATION_KEY, True)
        adaptive_steps = _parse_bool(merged, ADAPTIVE_KEY, False)
        tolerance = _parse_tolerance(merged[TOLERANCE_KEY])
        return PathSettings(
            class_to_explain.strip(), steps, method, baseline, normalize, adaptive_steps, tolerance
        )

    def config_spec(self) -> lit_types.Spec:
        d = self._defaults
        return {
            CLASS_KEY: lit_types.TextSegment(required=False, default=d[CLASS_KEY]),
            INTERPOLATION_KEY: lit_types.Scalar(
                required=False, min_val=quadrature.MIN_STEPS, max_val=quadrature.MAX_STEPS,
                default=d[INTERPOLATION_KEY], step=1,
            ),
            METHOD_KEY: lit_types.CategoryLabel(
                required=False, vocab=list(quadrature.METHODS), default=d[METHOD_KEY]),
            BASELINE_KEY: lit_types.CategoryLabel(required=False, vocab=list(BASELINES), default=d[BASELINE_KEY]),
            NORMALIZATION_KEY: lit_types.Boolean(required=False, default=d[NORMALIZATION_KEY]),
            ADAPTIVE_KEY: lit_types.Boolean(required=False, default=d[ADAPTIVE_KEY]),
            TOLERANCE_KEY: lit_types.Scalar(
                required=False, min_val=MIN_TOLERANCE, max_val=MAX_TOLERANCE, default=d[TOLERANCE_KEY]
            ),
        }

    def meta_spec(self) -> lit_types.Spec:
        spec: lit_types.Spec = {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=True)}
        if self._report_completeness:
            spec[COMPLETENESS_KEY] = lit_types.Scalar()
        return spec

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return bool(find_grad_fields(model, need_input_embs=True))

    def run(
        self,
        inputs: list[JsonDict],
        model: lit_model.Model,
        dataset: lit_dataset.Dataset | None = None,
        model_outputs: list[JsonDict] | None = None,
        config: JsonDict | None = None,
    ) -> list[JsonDict]:
        """Explains each input; results also carry `completeness_delta`."""
        del dataset
        settings = self.parse_config(config)
        fields = find_grad_fields(model, need_input_embs=True)
        if not fields:
            raise ValueError(
                f"{type(self).__name__} needs a model whose TokenGradients align to Tokens"
                " and whose TokenEmbeddings appear in both its input and output specs."
            )
        if model_outputs is None:
            model_outputs = list(model.predict(inputs))
        return [
            self._explain(model, fields, example, output, settings)
            for example, output in zip(inputs, model_outputs)
        ]

    def _class_to_explain(
        self, model: lit_model.Model, grad_key: str | None, example: JsonDict,
        output: JsonDict, settings: PathSettings,
    ) -> str | None:
        if grad_key is None:
            if settings.class_to_explain:
                raise ValueError(f"The model has no class to explain (regression); got {settings.class_to_explain!r}.")
            return None
        if settings.class_to_explain:
            vocab = getattr(model.input_spec()[grad_key], "vocab", None)
            if vocab and settings.class_to_explain not in vocab:
                raise ValueError(f"Unknown class {settings.class_to_explain!r} to explain; accepted: {list(vocab)}.")
            return settings.class_to_explain
        value = output.get(grad_key, example.get(grad_key))
        return None if value in (None, "") else value

    def _baseline(
        self, model: lit_model.Model, fields: list[GradField], xs: list[np.ndarray], kind: str
    ) -> list[np.ndarray]:
        baselines = []
        for f, x in zip(fields, xs):
            vector = None
            if kind != "zero" and hasattr(model, protocol.BASELINE_METHOD):
                vector = getattr(model, protocol.BASELINE_METHOD)(f.embs, kind)
            if vector is None:
                if kind != "zero":
                    logging.warning("The model declares no %r baseline for %s; using zeros.", kind, f.embs)
                vector = np.zeros(x.shape[-1], dtype=np.float32)
            baselines.append(np.broadcast_to(np.asarray(vector, dtype=np.float32), x.shape))
        return baselines

    def _explain(
        self, model: lit_model.Model, fields: list[GradField], example: JsonDict,
        output: JsonDict, settings: PathSettings,
    ) -> JsonDict:
        grad_key = fields[0].grad_key
        grad_class = self._class_to_explain(model, grad_key, example, output, settings)
        xs = [np.asarray(output[f.embs], dtype=np.float32) for f in fields]  # each [T_f, D]
        if len({x.shape[-1] for x in xs}) > 1:
            raise ValueError("Segments with different embedding sizes can't be explained together.")
        tokens = [t for f in fields for t in output[f.tokens]]
        x = torch.from_numpy(np.concatenate(xs))  # [T, D]
        movable = torch.tensor([t not in SPECIAL_TOKENS for t in tokens], dtype=torch.bool)  # [T]
        baseline = torch.from_numpy(np.concatenate(self._baseline(model, fields, xs, settings.baseline)))
        baseline = torch.where(movable[:, None], baseline, x)  # [T, D]
        lengths = [len(x_f) for x_f in xs]
        has_score = protocol.TARGET_SCORE_FIELD in model.output_spec()
        template = {k: v for k, v in example.items() if k not in ("_id", "_meta")}
        if grad_key is not None:
            template[grad_key] = grad_class

        def grad_fn(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # rows: [R, T, D] -> model inputs with each segment's embeddings replaced.
            parts = torch.split(rows, lengths, dim=1)  # each [R, T_f, D]
            batch = [
                dict(template, **{f.embs: part[r].numpy() for f, part in zip(fields, parts)})
                for r in range(len(rows))
            ]
            outputs = list(model.predict(batch))
            scores = torch.tensor(
                [o[protocol.TARGET_SCORE_FIELD] if has_score else math.nan for o in outputs]
            )  # [R]
            grads = torch.from_numpy(
                np.stack([np.concatenate([o[f.grad] for f in fields]) for o in outputs])
            )  # [R, T, D]
            return scores, grads

        # The model output is x's own row when its gradients are for the same class.
        input_eval = None
        if has_score and (grad_key is None or output.get(grad_key) == grad_class):
            input_grads = np.concatenate([np.asarray(output[f.grad], dtype=np.float32) for f in fields])  # [T, D]
            input_eval = (float(output[protocol.TARGET_SCORE_FIELD]), torch.from_numpy(input_grads))
        result = self._attribute(x, baseline, movable, grad_fn, settings, input_eval)
        scores = result.attributions.sum(-1).numpy()  # [T]
        salience = _scores_to_salience(fields, output, scores, settings.normalize)
        if self._report_completeness:
            salience[COMPLETENESS_KEY] = result.completeness_delta
        else:
            logging.info("%s completeness delta %.3g over %d rows.", type(self).__name__,
                         result.completeness_delta, result.num_rows)
        return salience


def _parse_steps(value: Any) -> int:
    accepted = f"an integer in [{quadrature.MIN_STEPS}, {quadrature.MAX_STEPS}]"
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{INTERPOLATION_KEY!r} must be {accepted}, got {value!r}.")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{INTERPOLATION_KEY!r} must be {accepted}, got {value!r}.") from None
    if not number.is_integer() or not quadrature.MIN_STEPS <= number <= quadrature.MAX_STEPS:
        raise ValueError(f"{INTERPOLATION_KEY!r} must be {accepted}, got {value!r}.")
    return int(number)


def _parse_tolerance(value: Any) -> float:
    accepted = f"a number in [{MIN_TOLERANCE:g}, {MAX_TOLERANCE:g}]"
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{TOLERANCE_KEY!r} must be {accepted}, got {value!r}.")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{TOLERANCE_KEY!r} must be {accepted}, got {value!r}.") from None
    if not MIN_TOLERANCE <= number <= MAX_TOLERANCE:  # NaN fails too.
        raise ValueError(f"{TOLERANCE_KEY!r} must be {accepted}, got {value!r}.")
    return number


class IntegratedGradients(_PathInterpreter):
    """IG: all word tokens move together from the baseline to the input.

    Unlike LIT 1.3's IG, the quadrature is exact for low-degree polynomials
    (Gauss-Legendre by default), the baseline defaults to [MASK], special tokens
    stay fixed, and completeness is measured.
    """

    def _groups(self, movable):
        return attribution.ig_groups(movable)


class SequentialIntegratedGradients(_PathInterpreter):
    """SIG (Enguehard 2023): IG once per word token, moving that token alone."""

    def _groups(self, movable):
        return attribution.sig_groups(movable)
