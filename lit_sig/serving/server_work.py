"""What a LIT component's request will run, checked before any handler runs: its config and its work.

`interpretation_work` / `generation_work`: a LIT component's config checked as
strictly as ours (required keys, types, ranges, names that exist), and what the
request will run: the examples (the whole data set where LIT uses it) and model
rows per example, so the server can price it in token-rows (`cost`);
`prediction_work` does the same for models whose `predict` runs interpreters.

Every problem raises ValueError naming it and the accepted values.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lit_nlp.api import components as lit_components
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types
from lit_nlp.components import (
    ablation_flip,
    curves,
    gradient_maps,
    hotflip,
    lime_explainer,
    nearest_neighbors,
    pdp,
    projection,
    salience_clustering,
    scrambler,
    tcav,
    word_replacer,
)
from lit_nlp.lib import utils

from lit_sig.lit import protocol
from lit_sig.serving import server_limits
from lit_sig.serving.server_limits import integer_in

MAX_SEED = 2**32 - 1
_PDP_VALUES = 10  # LIT's PDP tries 10 values of a numeric feature.
# LIT's Ablation Flip ablates at most this many tokens, in every combination.
_MAX_ABLATABLE = ablation_flip.MAX_ABLATABLE_TOKENS
_PREDICTIONS = (lit_types.MulticlassPreds, lit_types.RegressionScore)
_PROJECTION_KEYS = frozenset({"dataset_name", "model_name", "field_name", "proj_kw", "use_input"})


@dataclasses.dataclass(frozen=True)
class Work:
    """Model rows a request runs: `rows = (per_token, per_input)` for each of `examples`."""

    examples: Sequence[Mapping[str, Any]]
    rows: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Call:
    """One component call: what it runs on, with which config."""

    model: lit_model.Model
    dataset: lit_dataset.Dataset
    examples: Sequence[Mapping[str, Any]]
    config: Mapping[str, Any]
    model_names: Sequence[str]
    dataset_names: Sequence[str]

    def dataset_examples(self) -> Sequence[Mapping[str, Any]]:
        """The inputs, or the whole data set where the component uses it for no inputs."""
        return self.examples or self.dataset.examples


def prediction_work(model: lit_model.Model, examples: Sequence[Mapping[str, Any]]) -> list[Work]:
    """What predicting `examples` runs beyond plain model rows (none for most models).

    A model that runs interpreters in its `predict` (`salience_runs()`, such as
    the LM demo's Sequence Salience model) runs each one's rows, and one
    gradient row per input where `reads_gradients`.
    """
    runs = protocol.find_capability(model, "salience_runs")
    if runs is None:
        return []
    rows = [server_limits.rows_per_token_and_input(interpreter, config) for interpreter, config in runs()]
    gradient_pass = int(bool(protocol.find_capability(model, "reads_gradients")))
    return [Work(examples, (sum(r[0] for r in rows), sum(r[1] for r in rows) + gradient_pass))]


def cost(model: lit_model.Model, work: Sequence[Work]) -> int:
    """Token-rows of `work` on `model`."""
    return sum(server_limits.cost_of(w.rows, server_limits.token_counts(model, w.examples)) for w in work)


def _check_spec(config: Mapping[str, Any] | None, spec: lit_types.Spec, name: str) -> dict:
    """`config` (required when the spec has required keys) with LIT's required keys present."""
    required = [k for k, v in spec.items() if v.required]
    if config is None:
        if required:
            raise ValueError(f"{name} needs a config with the keys {required}.")
        return {}
    missing = [k for k in required if k not in config]
    if missing:
        raise ValueError(f"{name}: config keys missing: {missing}.")
    return dict(config)


def _one_of(config: Mapping[str, Any], key: str, accepted: Sequence[Any], optional: bool = False) -> Any:
    value = config.get(key)
    if optional and value in (None, ""):
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or value not in accepted:
        raise ValueError(f"{key!r} must be one of {list(accepted)}, got {str(value)[:80]!r}.")
    return value


def _boolean(config: Mapping[str, Any], key: str) -> bool | None:
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false, got {str(value)[:80]!r}.")
    return value


def _string(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {str(value)[:80]!r}.")
    return value


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key!r} must be a list of strings, got {str(value)[:80]!r}.")
    return value


def _number(config: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    """`config[key]` as a number in [low, high] (a JSON number or ASCII decimal text), None if absent."""
    value = config.get(key)
    if value is None:
        return None
    message = f"{key!r} must be a number in [{low:g}, {high:g}], got {str(value)[:40]!r}."
    if isinstance(value, str) and value.strip().isascii():
        try:
            value = float(value)
        except ValueError:
            raise ValueError(message) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(message)
    return float(value)


def _fields_of(spec: lit_types.Spec, types: tuple[type, ...]) -> list[str]:
    return [k for k, v in spec.items() if isinstance(v, types)]


def _class_vocab(model: lit_model.Model) -> list[str]:
    vocabs = [v.vocab for v in model.output_spec().values() if isinstance(v, lit_types.MulticlassPreds) and v.vocab]
    return list(vocabs[0]) if vocabs else []


def _lit_salience(component: Any, call: Call) -> tuple[int, int]:
    """Rows per example of LIT's own token salience methods (IG, LIME, gradients), their keys checked."""
    config = call.config
    if isinstance(component, gradient_maps.IntegratedGradients):
        if (label := _string(config, gradient_maps.CLASS_KEY)) and (vocab := _class_vocab(call.model)):
            _one_of(config, gradient_maps.CLASS_KEY, vocab)
        elif label is None and gradient_maps.CLASS_KEY in config:
            raise ValueError(f"{gradient_maps.CLASS_KEY!r} must be a class name string, got null.")
        _boolean(config, gradient_maps.NORMALIZATION_KEY)
    if isinstance(component, lime_explainer.LIME):
        integer_in(config, lime_explainer.KERNEL_WIDTH_KEY, 1, 10**6)
        _string(config, lime_explainer.MASK_KEY)
        if config.get(lime_explainer.SEED_KEY) != "":
            integer_in(config, lime_explainer.SEED_KEY, 0, MAX_SEED)
        integer_in(config, lime_explainer.CLASS_KEY, -1, max(len(_class_vocab(call.model)) - 1, 0))
        pred_types = component.config_spec()[lime_explainer.TARGET_HEAD_KEY].types
        pred_fields = [k for k, v in call.model.output_spec().items() if type(v).__name__ in pred_types]
        _one_of(config, lime_explainer.TARGET_HEAD_KEY, pred_fields, optional=True)
        if (target := config.get(lime_explainer.TARGET_INFO_KEY)) is not None:
            if not isinstance(target, dict):
                raise ValueError(f"{lime_explainer.TARGET_INFO_KEY!r} must be an object with a 'field' and 'index'.")
            _one_of(target, "field", pred_fields)
            if target.get("index") is not None:
                integer_in(target, "index", 0, max(len(_class_vocab(call.model)) - 1, 0))
    return server_limits.rows_per_token_and_input(component, config)


def _salience_clustering(component: salience_clustering.SalienceClustering, call: Call) -> list[Work]:
    config = _check_spec(call.config, component.config_spec(), "Salience Clustering")
    mapper_name = _one_of(config, salience_clustering.SALIENCE_MAPPER_KEY, list(component.salience_mappers))
    mapper = component.salience_mappers[mapper_name]
    if not mapper.is_compatible(model=call.model, dataset=call.dataset):
        raise ValueError(f"The Salience Mapper {mapper_name!r} does not apply to this model and data set.")
    # Its mapper gets the same config: LIT's caps on IG steps and LIME samples hold here too.
    rows = _lit_salience(mapper, dataclasses.replace(call, config=config))
    examples = call.dataset_examples()
    clusters = integer_in(config, salience_clustering.N_CLUSTERS_KEY, 2, 100)
    reuse = _boolean(config, salience_clustering.REUSE_CLUSTERING)
    if not reuse and clusters > len(examples):
        raise ValueError(f"{clusters} clusters of {len(examples)} examples: ask for at most as many clusters.")
    integer_in(config, salience_clustering.TOP_K_TOKENS_KEY, 1, 20)
    integer_in(config, salience_clustering.N_TOKENS_TO_DISPLAY_KEY, 5, 50)
    integer_in(config, salience_clustering.SEED_KEY, 0, MAX_SEED)
    return [Work(examples, rows)]


def _tcav(component: tcav.TCAV, call: Call) -> list[Work]:
    config = call.config
    if not config:
        raise ValueError("TCAV needs a config with 'concept_set_ids', 'class_to_explain' and 'grad_layer'.")
    if not _strings(config, "concept_set_ids"):
        raise ValueError("TCAV: 'concept_set_ids' must list the ids of the concept's examples.")
    grads = _fields_of(call.model.output_spec(), (lit_types.Gradients,))
    _one_of(config, "grad_layer", grads)
    _string(config, "class_to_explain")
    _strings(config, "negative_set_ids")
    _number(config, "test_size", 0.01, 0.99)
    if config.get("random_state") is not None:
        integer_in(config, "random_state", 0, MAX_SEED)
    if (cav := config.get("cav")) is not None and not (
        isinstance(cav, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cav)
    ):
        raise ValueError("TCAV: 'cav' must be a list of numbers.")
    return [Work(call.examples, (0, 2))]  # Its predictions, then those of the inputs relabelled.


def _projection(component: projection.ProjectionManager, call: Call) -> list[Work]:
    config = call.config
    if not config:
        raise ValueError(f"Projections need a config with the keys {sorted(_PROJECTION_KEYS)}.")
    if unknown := sorted(set(config) - _PROJECTION_KEYS):
        raise ValueError(f"Unknown config key(s) {unknown}; accepted: {sorted(_PROJECTION_KEYS)}.")
    _one_of(config, "dataset_name", call.dataset_names, optional=True)
    _one_of(config, "model_name", call.model_names, optional=True)
    use_input = _embeddings_field(config, "field_name", call)
    proj_kw = config.get("proj_kw", {})
    if not isinstance(proj_kw, dict) or set(proj_kw) - {"n_components"}:
        raise ValueError("'proj_kw' may only set 'n_components', e.g. {'n_components': 3}.")
    integer_in(proj_kw, "n_components", 1, 3)
    return _embeddings_work(call, use_input)


def _embeddings_field(config: Mapping[str, Any], key: str, call: Call) -> bool:
    """Checks `config[key]` names an Embeddings field of the data (`use_input`) or the model's outputs;
    returns `use_input`."""
    use_input = _boolean(config, "use_input")
    spec = call.dataset.spec() if use_input else call.model.output_spec()
    _one_of(config, key, _fields_of(spec, (lit_types.Embeddings,)))
    return use_input


def _embeddings_work(call: Call, use_input: bool) -> list[Work]:
    """The data set's and the inputs' embeddings: read from the data, or one forward pass each."""
    rows = (0, 0) if use_input else (0, 1)
    return [Work(call.dataset.examples, rows), Work(call.examples, rows)]


def _nearest_neighbors(component: nearest_neighbors.NearestNeighbors, call: Call) -> list[Work]:
    config = call.config
    if not config:
        raise ValueError("Nearest neighbors needs a config with 'embedding_name' and 'num_neighbors'.")
    if len(call.examples) != 1:
        raise ValueError(f"Nearest neighbors takes exactly 1 input, got {len(call.examples)}.")
    use_input = _embeddings_field(config, "embedding_name", call)
    integer_in(config, "num_neighbors", 1, max(len(call.dataset), 1))
    return _embeddings_work(call, use_input)


def _pdp(component: pdp.PdpInterpreter, call: Call) -> list[Work]:
    config = call.config
    if not config:
        raise ValueError("PDP needs a config with a 'feature'.")
    spec = call.dataset.spec()
    features = [
        k
        for k, v in spec.items()
        if k in call.model.input_spec() and isinstance(v, (lit_types.Scalar, lit_types.CategoryLabel))
    ]
    feature = _one_of(config, "feature", features)
    values = _PDP_VALUES
    if isinstance(spec[feature], lit_types.CategoryLabel):
        values = len(spec[feature].vocab or [])
    value_range = config.get("range", [])
    if not isinstance(value_range, list) or len(value_range) not in (0, 2):
        raise ValueError("PDP: 'range' must be [] or [low, high].")
    for bound in value_range:
        _number({"range": bound}, "range", -1e300, 1e300)
    return [Work(call.dataset_examples(), (0, values))]


def _curves(component: curves.CurvesInterpreter, call: Call) -> list[Work]:
    config = _check_spec(call.config, component.config_spec(), "Curves")
    preds = _fields_of(call.model.output_spec(), (lit_types.MulticlassPreds,))
    field = _one_of(config, curves.TARGET_PREDICTION_KEY, preds, optional=True) or (preds[0] if preds else None)
    if field is None:
        raise ValueError("Curves need a model with a MulticlassPreds output.")
    spec = call.model.output_spec()[field]
    _one_of(config, curves.TARGET_LABEL_KEY, list(spec.vocab or []))
    if spec.parent and any(spec.parent not in example for example in call.examples):
        raise ValueError(f"Curves need each input's label ({spec.parent!r}).")
    return [Work(call.examples, (0, 1))]


def _ablation_flip(component: ablation_flip.AblationFlip, call: Call) -> list[Work]:
    config = _check_spec(call.config, component.config_spec(), "Ablation Flip")
    integer_in(config, ablation_flip.NUM_EXAMPLES_KEY, 1, 1000)
    max_ablations = integer_in(config, ablation_flip.MAX_ABLATIONS_KEY, 1, _MAX_ABLATABLE)
    _strings(config, ablation_flip.TOKENS_TO_IGNORE_KEY)
    _one_of(config, ablation_flip.PREDICTION_KEY, _fields_of(call.model.output_spec(), _PREDICTIONS))
    _number(config, ablation_flip.REGRESSION_THRESH_KEY, -1e300, 1e300)
    fields = _fields_of(call.model.input_spec(), (lit_types.TextSegment, lit_types.SparseMultilabel, lit_types.URL))
    for field in _strings(config, ablation_flip.FIELDS_TO_ABLATE_KEY):
        _one_of({"field": field}, "field", fields)
    # One prediction per leave-one-out, then per combination of up to `max_ablations` of its 10 best tokens.
    words = max((len(str(ex.get(f, "")).split()) for ex in call.examples for f in fields), default=0)
    ablatable = min(words, _MAX_ABLATABLE)
    combinations = sum(math.comb(ablatable, k) for k in range(1, max_ablations + 1))
    return [Work(call.examples, (0, 1 + words + combinations))]


def _hotflip(component: hotflip.HotFlip, call: Call) -> list[Work]:
    config = _check_spec(call.config, component.config_spec(), "HotFlip")
    integer_in(config, hotflip.NUM_EXAMPLES_KEY, 1, 1000)
    max_flips = integer_in(config, hotflip.MAX_FLIPS_KEY, 1, 10)
    _strings(config, hotflip.TOKENS_TO_IGNORE_KEY)
    _one_of(config, hotflip.PREDICTION_KEY, _fields_of(call.model.output_spec(), _PREDICTIONS))
    _number(config, hotflip.REGRESSION_THRESH_KEY, -1e300, 1e300)
    _strings(config, hotflip.FIELDS_TO_HOTFLIP_KEY)
    return [Work(call.examples, (0, 2 + 2**max_flips))]


def _text_generator(component: Any, call: Call) -> list[Work]:
    config = _check_spec(call.config, component.config_spec(), type(component).__name__)
    fields = _fields_of(call.model.input_spec(), (lit_types.TextSegment,))
    key = scrambler.FIELDS_TO_SCRAMBLE_KEY if isinstance(component, scrambler.Scrambler) else None
    key = key or word_replacer.FIELDS_TO_REPLACE_KEY
    for field in _strings(config, key):
        _one_of({"field": field}, "field", fields)
    if isinstance(component, word_replacer.WordReplacer):
        _string(config, word_replacer.SUBSTITUTIONS_KEY)
    return [Work(call.examples, (0, 0))]


_INTERPRETERS: dict[type, Callable[[Any, Call], list[Work]]] = {
    salience_clustering.SalienceClustering: _salience_clustering,
    tcav.TCAV: _tcav,
    projection.ProjectionManager: _projection,
    nearest_neighbors.NearestNeighbors: _nearest_neighbors,
    pdp.PdpInterpreter: _pdp,
    curves.CurvesInterpreter: _curves,
}
_GENERATORS: dict[type, Callable[[Any, Call], list[Work]]] = {
    ablation_flip.AblationFlip: _ablation_flip,
    hotflip.HotFlip: _hotflip,
    scrambler.Scrambler: _text_generator,
    word_replacer.WordReplacer: _text_generator,
}
_LIT_SALIENCE = (
    gradient_maps.GradientNorm,
    gradient_maps.GradientDotInput,
    gradient_maps.IntegratedGradients,
    lime_explainer.LIME,
)


def _check_compatible(component: lit_components.Interpreter, name: str, call: Call) -> None:
    try:
        compatible = component.is_compatible(model=call.model, dataset=call.dataset)
    except Exception:  # pylint: disable=broad-except  # A component that can't tell is not offered.
        compatible = False
    if not compatible:
        raise ValueError(f"{name!r} does not apply to this model and data set.")


def lit_component_spec(component: Any, name: str, config: Mapping[str, Any] | None) -> None:
    """LIT's own check of a config (every required key of the spec present), as a ValueError."""
    spec = component.config_spec()
    if spec and config is not None:
        try:
            utils.validate_config_against_spec(dict(config), spec, name)
        except KeyError as error:
            raise ValueError(str(error.args[0] if error.args else error)) from None


def interpretation_work(component: lit_components.Interpreter, name: str, call: Call) -> list[Work]:
    """Checks an interpretation request's config; returns what it will run (see the module doc)."""
    _check_compatible(component, name, call)
    for cls, check in _INTERPRETERS.items():
        if isinstance(component, cls):
            return check(component, call)
    lit_component_spec(component, name, call.config)
    if isinstance(component, _LIT_SALIENCE):
        return [Work(call.examples, _lit_salience(component, call))]
    return [Work(call.examples, server_limits.rows_per_token_and_input(component, call.config or {}))]


def generation_work(component: lit_components.Generator, name: str, call: Call) -> list[Work]:
    """Checks a generation request's config; returns what it will run."""
    _check_compatible(component, name, call)
    for cls, check in _GENERATORS.items():
        if isinstance(component, cls):
            return check(component, call)
    lit_component_spec(component, name, call.config)
    return [Work(call.examples, (0, 1))]
