"""What the hardened LIT app checks in a request before its handler runs: the body, the names, the work.

`parse_json` reads the body as plain JSON; `RequestChecks` (a mixin of
`server.HardenedLitApp`) checks each handler's inputs and component config,
names, and prices interpretations and generations (413 over the cost cap).
"""

import http
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from lit_nlp.api import types as lit_types
from lit_nlp.components import projection, salience_clustering
from lit_nlp.lib import utils

from lit_sig.serving import server_checks, server_work
from lit_sig.serving.server_limits import RequestError

# LIT handlers (by function name) whose `inputs` run the model, and those that
# are priced (so may wait for a heavy-work slot): interpretations and generations,
# and predictions of models that run interpreters (`server_work.prediction_work`).
MODEL_HANDLERS = frozenset(
    {"_get_preds", "_get_interpretations", "_get_metrics", "_get_generated", "_annotate_new_data"}
)
INPUT_HANDLERS = MODEL_HANDLERS | {"_save_datapoints"}
HEAVY_HANDLERS = frozenset({"_get_interpretations", "_get_generated", "_get_preds", "_get_metrics"})


def parse_json(body: bytes) -> Any:
    """The request body as plain JSON (None when empty); ValueError for malformed JSON or JSON the server refuses."""
    if not body:
        return None
    try:
        value = json.loads(body)
    except RecursionError:
        raise ValueError("Malformed JSON: nested too deeply.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError.
        raise ValueError(f"Malformed JSON: {error}") from None
    server_checks.check_json(value)
    return value


class RequestChecks:
    """Checks of a request's body for the LIT handler it goes to (a mixin of `server.HardenedLitApp`)."""

    def _check_request(self, name: str, args: dict[str, str], data: Any) -> tuple[int, Any]:
        """Checks the body for handler `name` (ValueError or RequestError); returns its cost and component.

        Inputs are replaced, in `data`, by what LIT's handlers take (ids derived from the data).
        """
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"Malformed request: the body must be a JSON object, not a {type(data).__name__}.")
        if name == "_post_new_data":
            self._check_new_data()
            dataset = self._datasets.get(args.get("dataset_name", ""))
            if dataset is None:
                raise ValueError('Must provide a served "dataset_name" for the posted examples.')
            server_checks.new_examples((data or {}).get("inputs"), self._max_inputs, dataset.spec())
            return 0, None
        if name not in INPUT_HANDLERS:
            return 0, None
        inputs = (data or {}).get("inputs")
        if not isinstance(inputs, list):
            raise ValueError('Malformed request: the body must be a JSON object with a list of "inputs".')
        if name in MODEL_HANDLERS and len(inputs) > self._max_inputs:
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(inputs)} inputs; the server takes at most {self._max_inputs} per request (max_inputs).",
            )
        dataset_name = args.get("dataset_name")
        data["inputs"] = server_checks.model_inputs(inputs, self._datasets.get(dataset_name), dataset_name)
        config = data.get("config")
        if config is not None and not isinstance(config, dict):
            raise ValueError('Malformed request: "config" must be a JSON object.')
        if name == "_get_interpretations":
            return self._check_component(args, "interpreter", self._interpreters, data["inputs"], config)
        if name == "_get_generated":
            return self._check_component(args, "generator", self._generators, data["inputs"], config)
        if name == "_get_preds":
            check_requested_types(args.get("requested_types", ""))
        if name == "_get_metrics" and config is not None:
            chosen = [m for m in args.get("metrics", "").split(",") if m] or list(self._metrics)
            for metric in chosen:
                server_work.lit_component_spec(self._metrics[metric], f"Metric {metric}", config)
        model = self._models.get(args.get("model", ""))
        if name in ("_get_preds", "_get_metrics") and model is not None:
            work = server_work.prediction_work(model, [ex["data"] for ex in data["inputs"]])
            return (self._priced(model, work), None) if work else (0, None)
        return 0, None

    def _check_component(
        self, args: dict[str, str], kind: str, components: Mapping[str, Any], inputs: list[dict], config: Any
    ) -> tuple[int, Any]:
        """The cost (token-rows) of running the `kind` named in `args`; 413 over `max_request_cost`."""
        missing = [p for p in ("model", "dataset_name", kind) if not args.get(p)]
        if missing:
            raise ValueError(f"Must provide {', '.join(repr(p) for p in missing)} in the query.")
        name, model, dataset = args[kind], self._models[args["model"]], self._datasets[args["dataset_name"]]
        component = components[name]
        call = server_work.Call(
            model, dataset, [ex["data"] for ex in inputs], config, list(self._models), list(self._datasets)
        )
        check = server_work.interpretation_work if kind == "interpreter" else server_work.generation_work
        work = check(component, name, call)
        if isinstance(component, salience_clustering.SalienceClustering) and not inputs:
            args["do_predict"] = "0"  # It runs on the whole data set; LIT's predictions of no inputs would not fit.
        if isinstance(component, projection.ProjectionManager):
            for example in call.examples:  # Projections of other inputs are not cached (LIT caches by id).
                if not self._is_served_id(example.get("_id", "")):
                    example["_id"] = ""
        return self._priced(model, work), component

    def _priced(self, model: Any, work: list[server_work.Work]) -> int:
        """The token-rows of `work` on `model`; 413 over `max_request_cost`."""
        cost = server_work.cost(model, work)
        if cost > self._limits.max_request_cost:
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"This request would run {cost:,} token-rows (the sum over the examples it runs of tokens x model"
                f" rows); the server's limit is {self._limits.max_request_cost:,} (max_request_cost). Send fewer or"
                " shorter inputs, or ask for less work (Interpolation steps, samples, salience methods).",
            )
        return cost

    def _check_names(self, args: Mapping[str, str]) -> None:
        """Raises a 404 RequestError for a model, data set or component `args` name that isn't served."""
        names = {
            "model": self._models,
            "dataset_name": self._datasets,
            "interpreter": self._interpreters,
            "generator": self._generators,
        }
        for param, known in names.items():
            if param in args and args[param] not in known:
                raise RequestError(http.HTTPStatus.NOT_FOUND, f"Unknown {param}; available: {sorted(known)}.")
        unknown_metrics = [m for m in args.get("metrics", "").split(",") if m and m not in self._metrics]
        if unknown_metrics:
            raise RequestError(http.HTTPStatus.NOT_FOUND, f"Unknown metrics; available: {sorted(self._metrics)}.")


def check_requested_types(names: str) -> None:
    """ValueError unless every comma-separated name is a LitType's (LIT would raise TypeError)."""
    for name in filter(None, names.split(",")):
        lit_type = getattr(lit_types, name, None)
        if not (isinstance(lit_type, type) and issubclass(lit_type, lit_types.LitType)):
            raise ValueError(f"requested_types: {name[:80]!r} is not a LitType name (such as MulticlassPreds).")


def check_init_args(loader: tuple[Callable, Any] | None, name: str | None, data: Any) -> None:
    """ValueError if a loader can't take the config's arguments (LIT would raise a TypeError or KeyError)."""
    config = (data or {}).get("config")
    if loader is None or not isinstance(config, dict):
        return
    args = {k: v for k, v in config.items() if k != "new_name"}
    if loader[1] is not None:
        try:
            utils.validate_config_against_spec(args, loader[1], str(name), raise_for_unsupported=True)
        except KeyError as error:
            raise ValueError(str(error.args[0] if error.args else error)) from None
        return
    try:
        inspect.signature(loader[0]).bind(**args)
    except TypeError as error:
        raise ValueError(f"{name} can't be created with the arguments {sorted(args)}: {error}.") from None
