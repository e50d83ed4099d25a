"""LIT `Interpreter` adapters over `lit_sig.core`.

They find their fields from the model's specs as LIT's `gradient_maps.py` does,
so they work with any LIT model that declares `TokenGradients` aligned to
`Tokens` and (for IG and SIG) `TokenEmbeddings` in both its input and output
specs. See `lit_sig.lit.protocol` for the optional extras they use.
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

from lit_sig.core import adaptive, attribution, engine, quadrature
from lit_sig.lit import protocol
from lit_sig.lit.config import Param

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
TOLERANCE_MET_KEY = "tolerance_met"  # Adaptive steps only: whether every delta ended within the tolerance.
EXACT_METHOD = "exact"  # SIG's closed form: single-token occlusion, forward passes only.
# Tokens that never move along a path: their baseline is themselves.
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


def _check_keys(config: JsonDict, accepted: list[str]) -> None:
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}; accepted: {accepted}.")


def _parse_bool(config: JsonDict, key: str, default: bool) -> bool:
    return Param(key, default).parse(config.get(key, default))


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


def baseline_embeddings(
    model: lit_model.Model, fields: list[GradField], kind: str, lengths: list[int], x: torch.Tensor
) -> torch.Tensor:
    """`[T, D]`: each field's `kind` baseline vector (see `BASELINES`), repeated over its `lengths` tokens."""
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
                result.update(scores_to_salience([f], [output[f.tokens]], scores, normalize))
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

    methods: tuple[str, ...] = quadrature.METHODS  # Accepted integration methods.

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        """`[G, T]` bool: which of the `[T]` movable tokens move together."""
        raise NotImplementedError

    def _attribute(
        self,
        problems: list[engine.PathProblem],
        scorer: engine.RowScorer,
        settings: PathSettings,
        has_score: bool,
    ) -> list[engine.PathAttribution]:
        """Runs the configured rule over every example's paths."""
        if settings.method == EXACT_METHOD:
            return engine.occlusion_attributions(problems, scorer)
        if settings.adaptive:
            return [
                adaptive.adaptive_path_attribution(
                    p.x, p.baseline, p.groups, _SingleExampleGradFn(scorer, p.key), settings.tolerance
                )
                for p in problems
            ]
        alphas, weights = quadrature.quadrature(settings.method, settings.steps)
        return engine.path_attributions(problems, scorer, alphas, weights, measure_completeness=has_score)

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
        if method not in self.methods:
            note = f" ({EXACT_METHOD!r} is SIG's closed form; IG has none per token)" if method == EXACT_METHOD else ""
            raise ValueError(f"Unknown {METHOD_KEY} {method!r}{note}; accepted: {', '.join(self.methods)}.")
        baseline = merged[BASELINE_KEY]
        if baseline not in BASELINES:
            raise ValueError(f"Unknown {BASELINE_KEY} {baseline!r}; accepted: {', '.join(BASELINES)}.")
        steps = _parse_steps(merged[INTERPOLATION_KEY])  # Ignored by 'exact', but still checked.
        if method != EXACT_METHOD:
            quadrature.quadrature(method, steps)  # Validates the range for this method.
        normalize = _parse_bool(merged, NORMALIZATION_KEY, True)
        adaptive_steps = _parse_bool(merged, ADAPTIVE_KEY, False)
        if adaptive_steps and method == EXACT_METHOD:
            raise ValueError(
                f"{ADAPTIVE_KEY!r} doesn't apply to {METHOD_KEY} {EXACT_METHOD!r}, which has no"
                f" quadrature error to refine; turn one of them off."
            )
        tolerance = _parse_tolerance(merged[TOLERANCE_KEY])
        return PathSettings(class_to_explain.strip(), steps, method, baseline, normalize, adaptive_steps, tolerance)

    def config_spec(self) -> lit_types.Spec:
        d = self._defaults
        return {
            CLASS_KEY: lit_types.TextSegment(required=False, default=d[CLASS_KEY]),
            INTERPOLATION_KEY: lit_types.Scalar(
                required=False,
                min_val=quadrature.MIN_STEPS,
                max_val=quadrature.MAX_STEPS,
                default=d[INTERPOLATION_KEY],
                step=1,
            ),
            METHOD_KEY: lit_types.CategoryLabel(required=False, vocab=list(self.methods), default=d[METHOD_KEY]),
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
            spec[TOLERANCE_MET_KEY] = lit_types.Boolean(required=False)
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
        """Explains each input; results also carry `completeness_delta`.

        Models that offer the device path (`lit_sig.lit.protocol.DevicePathModel`,
        found through LIT's wrappers too) run every input's rows on their
        device, several inputs per pass; others go through `predict`.
        """
        del dataset
        settings = self.parse_config(config)
        fields = find_grad_fields(model, need_input_embs=True)
        if not fields:
            raise ValueError(
                f"{type(self).__name__} needs a model whose TokenGradients align to Tokens"
                " and whose TokenEmbeddings appear in both its input and output specs."
            )
        if not inputs:
            return []
        requested = requested_class(model, fields[0].grad_key, settings.class_to_explain)
        device_model = protocol.find_device_path(model)
        if device_model is not None:
            prepared = device_model.path_inputs(inputs, [requested] * len(inputs), [f.embs for f in fields])
            problems = [
                self._problem(model, fields, settings.baseline, p, p.x, p.tokens, p.input_score) for p in prepared
            ]
            tokens = [p.tokens for p in prepared]
            scorer, has_score = device_model, True
        else:
            if model_outputs is None:
                model_outputs = list(model.predict(inputs))
            has_score = protocol.TARGET_SCORE_FIELD in model.output_spec()
            self._check_needs_score(settings, has_score)
            problems, tokens = [], []
            for example, output in zip(inputs, model_outputs):
                problems.append(
                    self._predict_problem(model, fields, settings.baseline, example, output, requested, has_score)
                )
                tokens.append([list(output[f.tokens]) for f in fields])
            scorer = _PredictScorer(model, problems[0].x.shape[-1])
        results = self._attribute(problems, scorer, settings, has_score)
        return [self._result(fields, t, r, settings) for t, r in zip(tokens, results)]

    def _check_needs_score(self, settings: PathSettings, has_score: bool) -> None:
        if has_score:
            return
        if settings.method == EXACT_METHOD or settings.adaptive:
            what = f"{METHOD_KEY} {EXACT_METHOD!r}" if settings.method == EXACT_METHOD else f"{ADAPTIVE_KEY!r}"
            raise ValueError(
                f"{what} needs the model to output its explained score: declare a Scalar output field"
                f" {protocol.TARGET_SCORE_FIELD!r} holding the score its TokenGradients are the gradient of."
            )

    def _problem(
        self,
        model: lit_model.Model,
        fields: list[GradField],
        kind: str,
        key: Any,
        x: torch.Tensor,
        tokens: list[list[str]],
        input_score: torch.Tensor | float | None,
    ) -> engine.PathProblem:
        """One example's paths: x `[T, D]`, its baseline, and the groups of its movable tokens."""
        flat = [t for field_tokens in tokens for t in field_tokens]
        movable = torch.tensor([t not in SPECIAL_TOKENS for t in flat], dtype=torch.bool, device=x.device)  # [T]
        lengths = [len(field_tokens) for field_tokens in tokens]
        baseline = baseline_embeddings(model, fields, kind, lengths, x)  # [T, D]
        baseline = torch.where(movable[:, None], baseline, x)
        return engine.PathProblem(key, x, baseline, self._groups(movable), input_score)

    def _predict_problem(
        self,
        model: lit_model.Model,
        fields: list[GradField],
        kind: str,
        example: JsonDict,
        output: JsonDict,
        requested: str | None,
        has_score: bool,
    ) -> engine.PathProblem:
        """The generic path: x from the model's output; rows go through `predict`."""
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
        key = _PredictRows(template, fields, [len(x) for x in xs])
        # The model output is x's own score when it is for the same class.
        input_score = None
        if has_score and (grad_key is None or output.get(grad_key) == grad_class):
            input_score = float(output[protocol.TARGET_SCORE_FIELD])
        tokens = [list(output[f.tokens]) for f in fields]
        return self._problem(model, fields, kind, key, torch.from_numpy(np.concatenate(xs)), tokens, input_score)

    def _result(
        self,
        fields: list[GradField],
        tokens: list[list[str]],
        result: engine.PathAttribution,
        settings: PathSettings,
    ) -> JsonDict:
        scores = result.token_attributions.double().numpy()  # [T]
        salience = scores_to_salience(fields, tokens, scores, settings.normalize)
        delta = result.completeness_delta
        if not result.converged:
            logging.warning(
                "%s: the tolerance %g was not met (completeness delta %.3g after %d rows); the float"
                " precision of the scores or the round limit stopped the refinement.",
                type(self).__name__,
                settings.tolerance,
                delta,
                result.num_rows,
            )
        if self._report_completeness:
            salience[COMPLETENESS_KEY] = delta
            if settings.adaptive:
                salience[TOLERANCE_MET_KEY] = result.converged
        else:
            logging.info(
                "%s completeness delta %s over %d rows.",
                type(self).__name__,
                "unmeasured" if delta is None else f"{delta:.3g}",
                result.num_rows,
            )
        return salience


@dataclasses.dataclass(eq=False)
class _PredictRows:
    """What the generic path needs to turn rows of one example into LIT inputs."""

    template: JsonDict  # The example, with the class to explain.
    fields: list[GradField]
    lengths: list[int]  # Tokens per field.


class _PredictScorer:
    """`engine.RowScorer` over a LIT model's `predict`: one input dict per row, on the CPU."""

    device = torch.device("cpu")

    def __init__(self, model: lit_model.Model, emb_dim: int):
        self._model = model
        self._emb_dim = emb_dim
        self._has_score = protocol.TARGET_SCORE_FIELD in model.output_spec()

    def rows_per_pass(self, num_tokens: int, with_grads: bool) -> int:
        del with_grads
        return attribution.rows_per_call(num_tokens, self._emb_dim)

    def score_rows(
        self, pieces: list[tuple[_PredictRows, torch.Tensor]], with_grads: bool
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


class _SingleExampleGradFn:
    """One example's rows through a `RowScorer`, as a `GradFn` (for adaptive steps)."""

    def __init__(self, scorer: engine.RowScorer, key: Any):
        self._scorer, self._key = scorer, key

    def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (result,) = self._scorer.score_rows([(self._key, rows)], True)
        return result


def _parse_steps(value: Any) -> int:
    return Param(INTERPOLATION_KEY, DEFAULT_STEPS, quadrature.MIN_STEPS, quadrature.MAX_STEPS).parse(value)


def _parse_tolerance(value: Any) -> float:
    return Param(TOLERANCE_KEY, adaptive.DEFAULT_TOLERANCE, MIN_TOLERANCE, MAX_TOLERANCE).parse(value)


class IntegratedGradients(_PathInterpreter):
    """IG: all word tokens move together from the baseline to the input.

    Unlike LIT 1.3's IG, the quadrature is exact for low-degree polynomials
    (Gauss-Legendre by default), the baseline defaults to [MASK], special tokens
    stay fixed, and completeness is measured.
    """

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        return attribution.ig_groups(movable)


class SequentialIntegratedGradients(_PathInterpreter):
    """SIG (Enguehard 2023): IG once per word token, moving that token alone.

    `Integration method: exact` gives SIG's token salience in closed form: summed
    over the embedding, token i's SIG is the integral of dF/da along a path on
    which only token i moves, so it equals F(x) - F(x with token i at its
    baseline). That costs T + 1 forward passes and no backward pass;
    `Interpolation steps` don't apply, and the completeness delta is 0 by
    construction.
    """

    methods = (*quadrature.METHODS, EXACT_METHOD)

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        return attribution.sig_groups(movable)
