"""The plumbing of IG and SIG: config, fields, baselines, and the model as the engine's `RowScorer`.

Models that offer the device path (`lit_sig.lit.protocol.DevicePathModel`, found
through LIT's wrappers too) embed the inputs and score rows on their device;
others go through `predict` (`lit_sig.lit.predict_path`). Either way every
input becomes a `protocol.PathInput`, and the engine runs all of them together.
"""

import torch
from absl import logging
from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types

from lit_sig.core import adaptive, engine, quadrature
from lit_sig.lit import config as config_lib
from lit_sig.lit import fields as fields_lib
from lit_sig.lit import inside, predict_path, protocol
from lit_sig.lit.config import ADAPTIVE_KEY, EXACT_METHOD, METHOD_KEY, PathSettings, explains_inside

JsonDict = lit_types.JsonDict

COMPLETENESS_KEY = "completeness_delta"
TOLERANCE_MET_KEY = "tolerance_met"  # Adaptive steps only: whether every delta ended within the tolerance.


class PathInterpreter(lit_components.Interpreter):
    """IG and SIG; subclasses say which tokens move together (`_groups`)."""

    methods: tuple[str, ...] = quadrature.METHODS  # Accepted integration methods.

    def __init__(self, autorun: bool = False, report_completeness: bool = True, **defaults):
        """`defaults` of the config keys, by `PathSettings` field name (`steps=20`, `adaptive=True`, ...).

        `report_completeness`: whether results carry `completeness_delta`. LIT 1.3's
        salience module draws every key of a result as token salience, so servers pass
        False; the delta is then logged instead.
        """
        self._autorun = autorun
        self._report_completeness = report_completeness
        self._baseline_given = "baseline" in defaults  # Else the model's default baseline, where it has one.
        self._schema = config_lib.Schema(PathSettings, defaults, {"method": self.methods})
        self.parse_config({})  # Fail early on bad defaults.

    def _groups(self, movable: torch.Tensor) -> torch.Tensor:
        """`[G, T]` bool: which of the `[T]` movable tokens move together."""
        raise NotImplementedError

    def parse_config(self, config: JsonDict | None) -> PathSettings:
        """Validates `config` over the defaults; raises ValueError naming accepted values."""
        method = (config or {}).get(METHOD_KEY)
        if method == EXACT_METHOD and EXACT_METHOD not in self.methods:
            raise ValueError(
                f"Unknown {METHOD_KEY} {method!r} ({EXACT_METHOD!r} is SIG's closed form; IG has none per token);"
                f" accepted: {', '.join(self.methods)}."
            )
        settings = self._schema.parse(config)
        if settings.method != EXACT_METHOD:  # 'exact' ignores the steps (still checked above).
            quadrature.quadrature(settings.method, settings.steps)  # Validates the range for this method.
        if settings.adaptive and settings.method == EXACT_METHOD:
            raise ValueError(
                f"{ADAPTIVE_KEY!r} doesn't apply to {METHOD_KEY} {EXACT_METHOD!r}, which has no"
                f" quadrature error to refine; turn one of them off."
            )
        return settings

    def config_spec(self) -> lit_types.Spec:
        return self._schema.spec()

    def meta_spec(self) -> lit_types.Spec:
        spec: lit_types.Spec = {"saliency": lit_types.TokenSalience(autorun=self._autorun, signed=True)}
        if self._report_completeness:
            spec[COMPLETENESS_KEY] = lit_types.Scalar()
            spec[TOLERANCE_MET_KEY] = lit_types.Boolean(required=False)
        return spec

    def is_compatible(self, model: lit_model.Model, dataset: lit_dataset.Dataset) -> bool:
        del dataset
        return bool(fields_lib.find_grad_fields(model, need_input_embs=True))

    def run(
        self,
        inputs: list[JsonDict],
        model: lit_model.Model,
        dataset: lit_dataset.Dataset | None = None,
        model_outputs: list[JsonDict] | None = None,
        config: JsonDict | None = None,
    ) -> list[JsonDict]:
        """Explains each input; results also carry `completeness_delta` (and, adaptive, `tolerance_met`)."""
        del dataset
        settings = self.parse_config(config)
        fields = fields_lib.find_grad_fields(model, need_input_embs=True)
        if not fields:
            raise ValueError(
                f"{type(self).__name__} needs a model whose TokenGradients align to Tokens"
                " and whose TokenEmbeddings appear in both its input and output specs."
            )
        if not inputs:
            return []
        requested = fields_lib.requested_class(model, fields[0].grad_key, settings.class_to_explain)
        device_model = protocol.find_device_path(model)
        if device_model is not None:
            prepared = device_model.path_inputs(inputs, [requested] * len(inputs), [f.embs for f in fields])
            scorer, has_score = device_model, True
        else:
            if explains_inside(settings):
                inside.inside_model(model)  # Raises: a layer or a neuron needs the device path.
            if model_outputs is None:
                model_outputs = list(model.predict(inputs))
            has_score = protocol.TARGET_SCORE_FIELD in model.output_spec()
            self._check_needs_score(settings, has_score)
            prepared = predict_path.predict_inputs(fields, inputs, model_outputs, requested, has_score)
            scorer = predict_path.PredictScorer(model, prepared[0].x.shape[-1])
        explicit = self._baseline_given or config_lib.BASELINE_KEY in (config or {})
        kind = fields_lib.resolve_baseline(model, settings.baseline, explicit)
        problems = [self._problem(model, fields, kind, p) for p in prepared]
        if explains_inside(settings):
            problems = self._inside(model, problems, settings)
        results = self._attribute(problems, scorer, settings, has_score)
        return [self._result(fields, p.key.tokens, r, settings) for p, r in zip(problems, results)]

    def _inside(
        self, model: lit_model.Model, problems: list[engine.PathProblem], settings: PathSettings
    ) -> list[engine.PathProblem]:
        """The problems with x and the baseline at `Layer` (every position moving) and F the `Neuron`'s."""
        baselines = [p.baseline for p in problems]
        keys = inside.rekey(model, [p.key for p in problems], baselines, settings.layer, settings.neuron)
        rekeyed = []
        for p, (key, baseline) in zip(problems, keys):
            groups = p.groups if settings.layer is None else self._groups(inside.moving_at_layer(key))
            rekeyed.append(engine.PathProblem(key, key.x, baseline, groups, key.input_score))
        return rekeyed

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
            return adaptive.adaptive_attributions(problems, scorer, settings.tolerance)
        alphas, weights = quadrature.quadrature(settings.method, settings.steps)
        return engine.path_attributions(problems, scorer, alphas, weights, measure_completeness=has_score)

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
        self, model: lit_model.Model, fields: list[fields_lib.GradField], kind: str, prepared: protocol.PathInput
    ) -> engine.PathProblem:
        """One example's paths: x `[T, D]`, its baseline, and the groups of its movable tokens
        (`fields.movable_tokens`: as the model says, else judged by their text)."""
        x = prepared.x
        movable = fields_lib.movable_tokens(model, fields, prepared)  # [T]
        lengths = [len(field_tokens) for field_tokens in prepared.tokens]
        baseline = fields_lib.baseline_embeddings(model, fields, kind, lengths, x)  # [T, D]
        baseline = torch.where(movable[:, None], baseline, x)
        return engine.PathProblem(prepared, x, baseline, self._groups(movable), prepared.input_score)

    def _result(
        self,
        fields: list[fields_lib.GradField],
        tokens: list[list[str]],
        result: engine.PathAttribution,
        settings: PathSettings,
    ) -> JsonDict:
        scores = result.token_attributions.double().numpy()  # [T]
        salience = fields_lib.scores_to_salience(fields, tokens, scores, settings.normalize)
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
