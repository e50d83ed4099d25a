"""A hardened LIT server: JSON errors, concurrent bounded requests, results that stay with their data.

LIT 1.3's own server answers a failed request with a 500 page that reflects the
error text unescaped, with a traceback; serves one request at a time; caches
predictions under whatever id the client sends; and lets any client load models
and data sets, read and write files by path, and store data for others to read.
Here:

* every failed request gets JSON `{"error": message}` (400 bad input, 403
  refused, 404 unknown route or name, 405 a method the route does not take,
  408 too slow a client, 413 too large, 503 busy or past its deadline; 500 only
  for server faults, without details), with `<`, `>` and `&` escaped, and the
  server keeps serving; so do the errors of the HTTP layer (`server_http`);
* the body is parsed once, as plain JSON (`server_checks.check_json`: no LIT
  type markers, bounded depth), and every input and component config is checked
  before any handler runs (`server_checks`);
* a prediction is cached only under the hash of the data it was computed from
  (`DataKeyedCache`), for the served data sets' examples: no client can make
  another see a result that is not its data's;
* requests are served by a threaded server; work is bounded
  (`server_limits.Limits`): inputs per request, token-rows per interpretation
  or generation (LIT's own components priced by what they run), heavy requests
  at once, admitted only when their expected wait is short (else 503 with
  Retry-After at once), a deadline; work stops when its client leaves;
* `/create_model` and `/create_dataset` work only with `allow_loading`;
  `/post_new_data`, `/fetch_new_data` and `/remove_new_data` only with
  `allow_new_data` (and within `max_new_data_bytes`); `/save_datapoints` and
  `/load_datapoints` only with a `datapoints_dir`, and only for paths inside it.
"""

import contextlib
import functools
import http
import inspect
import io
import json
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from absl import app as absl_app
from absl import logging
from lit_nlp import app as lit_app
from lit_nlp import dev_server
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types
from lit_nlp.components import projection, salience_clustering
from lit_nlp.lib import caching, serialize, utils, wsgi_app
from werkzeug import wrappers

from lit_sig.core import cancellation, progress
from lit_sig.serving import offline_client, server_admission, server_checks, server_http, server_limits
from lit_sig.serving.server_http import MAX_REQUEST_BYTES, error_body, error_response, read_body  # noqa: F401
from lit_sig.serving.server_limits import Limits, RequestError

SERVER_TYPES = ("default",)  # LIT's flag; its other types are not hardened.
DEVICES = ("cpu", "cuda")
INTERNAL_ERROR = "Internal error; see the server log."
API_METHODS = ("GET", "POST")
STATIC_METHODS = ("GET", "HEAD")
# LIT handlers (by function name) whose `inputs` run the model, and those that
# wait for a heavy-work slot.
_MODEL_HANDLERS = frozenset(
    {"_get_preds", "_get_interpretations", "_get_metrics", "_get_generated", "_annotate_new_data"}
)
_INPUT_HANDLERS = _MODEL_HANDLERS | {"_save_datapoints"}
_HEAVY_HANDLERS = frozenset({"_get_interpretations", "_get_generated"})


def _describe(error: Exception) -> tuple[http.HTTPStatus, str]:
    """The status and message for an exception a request raised.

    Only validation errors are the client's (400); anything else, such as a
    TypeError or KeyError from inside, is a fault of the server (500, no details).
    """
    if isinstance(error, RequestError):
        return error.status, str(error)
    if isinstance(error, cancellation.Cancelled):
        return http.HTTPStatus.SERVICE_UNAVAILABLE, str(error)
    if isinstance(error, FileNotFoundError):
        return http.HTTPStatus.NOT_FOUND, "No such file."
    if isinstance(error, ValueError):
        return http.HTTPStatus.BAD_REQUEST, str(error)
    return http.HTTPStatus.INTERNAL_SERVER_ERROR, INTERNAL_ERROR


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


class DataKeyedCache(caching.CachingModelWrapper):
    """LIT's prediction cache, keyed by the hash of each input's data, for the served examples only.

    LIT keys its cache by an input's `_id`, which a client may set to anything
    (and which LIT's Ablation Flip keeps on the examples it changes). Here a
    prediction is stored and found only where `_id` is the `input_hash` of the
    data itself and names an example of a served data set, so every cached
    result belongs to its data and the cache is no larger than the data sets.
    """

    def __init__(self, model: lit_model.Model, name: str, is_served_id: Callable[[str], bool], **kw: Any):
        super().__init__(model, name, **kw)
        self._cache_name = name
        self._is_served_id = is_served_id

    def key_fn(self, d: Mapping[str, Any]) -> caching.CacheKey:
        example_id = d.get("_id")
        if not example_id or not self._is_served_id(example_id) or caching.input_hash(d) != example_id:
            return None
        return (self._cache_name, example_id)


class HardenedLitApp(lit_app.LitApp):
    """`LitApp` with checked requests, JSON errors, data-keyed caches, opt-in loading and storage (module doc)."""

    def __init__(
        self,
        models: lit_model.ModelMap,
        datasets: Mapping[str, lit_dataset.Dataset],
        *,
        allow_loading: bool = False,
        allow_new_data: bool = False,
        datapoints_dir: str | pathlib.Path | None = None,
        limits: Limits | None = None,
        **kw,
    ):
        """Builds the app; `kw` are `LitApp`'s keyword arguments.

        Args:
            models: LIT models by name.
            datasets: LIT data sets by name.
            allow_loading: let clients create models and data sets (`/create_model`,
                `/create_dataset`) with the loaders LIT infers.
            allow_new_data: let clients store examples on the server
                (`/post_new_data`) and read or remove them by the random id it
                returns; at most `limits.max_new_data_bytes` in all.
            datapoints_dir: the existing folder that `/save_datapoints` and
                `/load_datapoints` may use; None turns both off.
            limits: bounds on the work of one request and on concurrent heavy
                requests (default `Limits()`); `max_inputs` is raised to the
                largest data set's size.

        Raises:
            ValueError: `datapoints_dir` is not an existing folder.
        """
        limits = limits or Limits()
        self._limits = limits
        self._max_inputs = max([limits.max_inputs, *(len(d) for d in datasets.values())])
        self.admission = server_admission.AdmissionGate(
            limits.max_heavy_requests, limits.max_queued_requests, limits.max_queue_wait_s
        )
        self._allow_loading = allow_loading
        self._allow_new_data = allow_new_data
        self._new_data_lock = threading.Lock()
        self._new_data_sizes: dict[str, int] = {}  # Bytes of each posted set, by its id.
        self._new_data_bytes = 0
        self._clustering_lock = threading.Lock()  # LIT's Salience Clustering keeps its last fit in the component.
        self._api_routes: set[str] = set()
        self._datapoints_dir = None
        if datapoints_dir is not None:
            self._datapoints_dir = pathlib.Path(datapoints_dir).resolve()
            if not self._datapoints_dir.is_dir():
                raise ValueError(f"datapoints_dir {datapoints_dir} is not an existing folder.")
        if not allow_loading:
            # No loaders: the UI offers no "load model/data set" controls.
            kw.setdefault("model_loaders", {})
            kw.setdefault("dataset_loaders", {})
        self._client_root = pathlib.Path(kw.get("client_root") or ".").resolve()
        warm_start, warm_projections = kw.pop("warm_start", 0.0), kw.pop("warm_projections", False)
        super().__init__(models, datasets, **kw)
        self._rekey_caches()
        self._warm(warm_start, warm_projections, kw.get("warm_start_progress_indicator"))

    def _is_client_file(self, path: str) -> bool:
        """Whether `path` names a file of the web client (as LIT's static handler maps it)."""
        if path in ("", "/", "/index.html"):
            return True
        resolved = (self._client_root / path.lstrip("/")).resolve()
        return resolved.is_relative_to(self._client_root) and resolved.is_file()

    # --- Caches ---

    def _is_served_id(self, example_id: str) -> bool:
        return any(example_id in dataset.index for dataset in self._datasets.values())

    def _rekey_caches(self) -> None:
        """Replaces LIT's id-keyed prediction caches by data-keyed ones (`DataKeyedCache`)."""
        for name, model in list(self._models.items()):
            if type(model) is caching.CachingModelWrapper:  # pylint: disable=unidiomatic-typecheck
                self._models[name] = DataKeyedCache(
                    model.wrapped, name, self._is_served_id, **self._caching_model_wrapper_kw
                )

    def _warm(self, rate: float, projections: bool, progress: Callable | None) -> None:
        """LIT's warm start (predictions, then projections), run on the data-keyed caches."""
        if projections:
            rate = 1.0
        if rate > 0:
            self._warm_start(rate=rate, progress_indicator=progress or (lambda examples: examples))
            self.save_cache()
            projections = projections or rate >= 1
        if projections:
            self._warm_projections(["pca", "umap"])

    # --- Requests ---

    def make_handler(self, fn: Callable[..., Any]) -> Callable[..., wrappers.Response]:
        """LIT's handler shim for `fn`: the body parsed once and checked, the work bounded, errors as JSON."""
        name = fn.__name__
        self._api_routes.add("/" + name.lstrip("_"))

        @functools.wraps(fn)
        def _handler(app: wsgi_app.App, request: wrappers.Request, environ: dict) -> wrappers.Response:
            try:
                args = request.args.to_dict()
                simple = utils.coerce_bool(args.pop("response_simple_json", True))
                self._check_names(request.args)
                data = parse_json(request.get_data())
                cost, component = self._check_request(name, args, data)
                outputs = self._run(name, fn, data, args, environ, cost, component)
                return app.respond(request, serialize.to_json(outputs, simple=simple), "application/json", 200)
            except Exception as error:  # pylint: disable=broad-except
                return _error_for(request, error)

        return _handler

    def _run(self, name: str, fn: Callable, data: Any, args: dict, environ: dict, cost: int, component: Any) -> Any:
        """Runs handler `fn`; model work under the deadline, heavy work through the admission gate."""
        if name not in _MODEL_HANDLERS:
            return fn(data, **args)
        arrived = environ.get(server_http.ARRIVED_KEY) or time.monotonic()
        deadline_s = self._limits.request_deadline_s
        stop = server_limits.stop_check(deadline_s, environ.get("werkzeug.socket"), arrived)
        with contextlib.ExitStack() as stack:
            if name in _HEAVY_HANDLERS and cost > self._limits.light_request_cost:
                ticket = stack.enter_context(self.admission.admit(cost, stop, arrived + deadline_s))
                stack.enter_context(progress.scope(ticket.rows))
            stack.enter_context(cancellation.scope(stop))
            if isinstance(component, salience_clustering.SalienceClustering):
                stack.enter_context(self._clustering_lock)
            return fn(data, **args)

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
        if name not in _INPUT_HANDLERS:
            return 0, None
        inputs = (data or {}).get("inputs")
        if not isinstance(inputs, list):
            raise ValueError('Malformed request: the body must be a JSON object with a list of "inputs".')
        if name in _MODEL_HANDLERS and len(inputs) > self._max_inputs:
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
            _check_requested_types(args.get("requested_types", ""))
        if name == "_get_metrics" and config is not None:
            chosen = [m for m in args.get("metrics", "").split(",") if m] or list(self._metrics)
            for metric in chosen:
                server_checks.lit_component_spec(self._metrics[metric], f"Metric {metric}", config)
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
        call = server_checks.Call(
            model, dataset, [ex["data"] for ex in inputs], config, list(self._models), list(self._datasets)
        )
        check = server_checks.interpretation_work if kind == "interpreter" else server_checks.generation_work
        work = check(component, name, call)
        if isinstance(component, salience_clustering.SalienceClustering) and not inputs:
            args["do_predict"] = "0"  # It runs on the whole data set; LIT's predictions of no inputs would not fit.
        if isinstance(component, projection.ProjectionManager):
            for example in call.examples:  # Projections of other inputs are not cached (LIT caches by id).
                if not self._is_served_id(example.get("_id", "")):
                    example["_id"] = ""
        cost = server_checks.cost(model, work)
        if cost > self._limits.max_request_cost:
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"This request would run {cost:,} token-rows (the sum over the examples it runs of tokens x model"
                f" rows); the server's limit is {self._limits.max_request_cost:,} (max_request_cost). Send fewer or"
                " shorter inputs, or ask for less work (Interpolation steps, samples).",
            )
        return cost, component

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

    def _check_loading(self) -> None:
        if not self._allow_loading:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Loading models and data sets from the UI is off; start the server with --allow_loading.",
            )

    def _check_new_data(self) -> None:
        if not self._allow_new_data:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Storing data on the server is off; start the server with --allow_new_data.",
            )

    def _confine(self, path: str | None) -> str:
        """`path` (relative to the datapoints folder, or absolute inside it), resolved."""
        if self._datapoints_dir is None:
            raise RequestError(
                http.HTTPStatus.FORBIDDEN,
                "Saving and loading datapoints is off; start the server with --datapoints_dir DIR.",
            )
        if not path:
            raise ValueError('Must provide a "path" inside the datapoints directory.')
        resolved = (self._datapoints_dir / path).resolve()
        # LIT also reads and writes `path` + ".lit.jsonl" and + ".lit.jsonl.spec".
        suffixes = ("", lit_dataset.LIT_FILE_EXTENSION, lit_dataset.LIT_FILE_EXTENSION + lit_dataset.LIT_SPEC_EXTENSION)
        for suffix in suffixes:
            touched = pathlib.Path(str(resolved) + suffix).resolve()
            if touched == self._datapoints_dir or not touched.is_relative_to(self._datapoints_dir):
                raise RequestError(
                    http.HTTPStatus.FORBIDDEN, "The path must be a file inside the datapoints directory."
                )
        return str(resolved)

    def _create_model(self, data: Any, model_name: str | None = None, **kw: Any) -> Any:
        self._check_loading()
        _check_init_args(self._model_loaders.get(model_name), model_name, data)
        result = super()._create_model(data, model_name=model_name, **kw)
        self._rekey_caches()
        return result

    def _create_dataset(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        self._check_loading()
        _check_init_args(self._dataset_loaders.get(dataset_name), dataset_name, data)
        return super()._create_dataset(data, dataset_name=dataset_name, **kw)

    def _save_datapoints(self, data: Any, dataset_name: str | None = None, path: str | None = None, **kw: Any) -> Any:
        return super()._save_datapoints(data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _load_datapoints(
        self, unused_data: Any, dataset_name: str | None = None, path: str | None = None, **kw: Any
    ) -> Any:
        return super()._load_datapoints(unused_data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _push_ui_state(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        if self.ui_state_tracker is None:
            raise RequestError(http.HTTPStatus.NOT_FOUND, "UI state sync is off (it is for notebooks).")
        return super()._push_ui_state(data, dataset_name=dataset_name, **kw)

    def _post_new_data(self, data: Any, dataset_name: str | None = None, **kw: Any) -> Any:
        size = len(json.dumps(data["inputs"]))
        self._reserve_new_data(size)
        try:
            result = super()._post_new_data(data, dataset_name=dataset_name, **kw)
        except BaseException:
            self._reserve_new_data(-size)
            raise
        with self._new_data_lock:
            self._new_data_sizes[result["load"].split("=", 1)[1]] = size
        return result

    def _reserve_new_data(self, size: int) -> None:
        """Counts `size` more bytes of posted data (negative: fewer); 413 past `max_new_data_bytes`."""
        limit = self._limits.max_new_data_bytes
        with self._new_data_lock:
            if size > 0 and self._new_data_bytes + size > limit:
                raise RequestError(
                    http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"The server keeps at most {limit:,} bytes of posted data (max_new_data_bytes);"
                    f" {self._new_data_bytes:,} are in use and these inputs take {size:,}."
                    " Remove some with /remove_new_data.",
                )
            self._new_data_bytes += size

    def _fetch_new_data(self, unused_data: Any, **kw: Any) -> Any:
        self._check_new_data()
        return super()._fetch_new_data(unused_data, **kw)

    def _remove_new_data(self, unused_data: Any, saved_datapoints_id: str | None = None, **kw: Any) -> Any:
        self._check_new_data()
        result = super()._remove_new_data(unused_data, saved_datapoints_id=saved_datapoints_id, **kw)
        with self._new_data_lock:
            size = self._new_data_sizes.pop(saved_datapoints_id or "", 0)
        self._reserve_new_data(-size)
        return result

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        """WSGI entry: the method checked, the body read within limits, then LIT's app; non-JSON errors become JSON."""
        try:
            self._check_method(environ)
            body = read_body(environ)
            if "\x00" in environ.get("PATH_INFO", ""):
                raise ValueError("The path contains a NUL character.")
        except Exception as error:  # pylint: disable=broad-except
            response = _error_for(wrappers.Request(environ), error)
            response.headers["Connection"] = "close"  # The rest of the body is unread.
        else:
            environ.pop("HTTP_TRANSFER_ENCODING", None)
            environ.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))})
            response = wrappers.Response.from_app(super().__call__, environ, buffered=True)
            if response.status_code >= 400 and response.mimetype != "application/json":
                status = http.HTTPStatus(response.status_code)
                response = error_response(status, status.phrase)
        server_http.end_reading(environ)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response(environ, start_response)

    def _check_method(self, environ: dict) -> None:
        """405 for a method the route does not take: LIT's API GET and POST, its client's files GET and HEAD."""
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        allowed = API_METHODS if (path[:-1] if path.endswith("/") else path) in self._api_routes else STATIC_METHODS
        if method not in allowed and allowed is STATIC_METHODS and not self._is_client_file(path):
            raise RequestError(http.HTTPStatus.NOT_FOUND, "Not Found.")
        if method not in allowed:
            raise RequestError(
                http.HTTPStatus.METHOD_NOT_ALLOWED,
                f"{environ.get('REQUEST_METHOD')} is not allowed here; allowed: {', '.join(allowed)}.",
                {"Allow": ", ".join(allowed)},
            )


def _check_requested_types(names: str) -> None:
    """ValueError unless every comma-separated name is a LitType's (LIT would raise TypeError)."""
    for name in filter(None, names.split(",")):
        lit_type = getattr(lit_types, name, None)
        if not (isinstance(lit_type, type) and issubclass(lit_type, lit_types.LitType)):
            raise ValueError(f"requested_types: {name[:80]!r} is not a LitType name (such as MulticlassPreds).")


def _check_init_args(loader: tuple[Callable, Any] | None, name: str | None, data: Any) -> None:
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


def _error_for(request: wrappers.Request, error: Exception) -> wrappers.Response:
    """The JSON error response for `error`, logged (with its traceback when it is the server's fault)."""
    status, message = _describe(error)
    if status >= http.HTTPStatus.INTERNAL_SERVER_ERROR and not isinstance(error, RequestError):
        if isinstance(error, cancellation.Cancelled):
            logging.warning("%s abandoned: %s", request.path, message)
        else:
            logging.error("%s failed", request.path, exc_info=error)
    else:
        logging.warning("%s: %d %s", request.path, status, message[:200])
    return error_response(status, message, getattr(error, "headers", None), getattr(error, "details", None))


def check_device(device: str | None) -> None:
    """Raises ValueError unless `device` is None or one of `DEVICES` that this machine has."""
    if device is not None and device not in DEVICES:
        raise ValueError(f"--device={device!r}; accepted: {', '.join(DEVICES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device=cuda, but PyTorch sees no CUDA device here; use --device=cpu.")


def make_server(app: HardenedLitApp, host: str, port: int, limits: Limits | None = None) -> server_http.Server:
    """A threaded server for `app` on `host:port` under `limits` (time-outs, connection cap; default `Limits()`)."""
    return server_http.make_server(app, host, port, limits or Limits())


def serve(
    models: lit_model.ModelMap,
    datasets: Mapping[str, lit_dataset.Dataset],
    *,
    host: str = "127.0.0.1",
    port: int = 5432,
    server_type: str = "default",
    client_root: str | None = None,
    allow_loading: bool = False,
    allow_new_data: bool = False,
    datapoints_dir: str | None = None,
    limits: Limits | None = None,
    **app_kw,
) -> None:
    """Serves `HardenedLitApp(models, datasets, ...)` on `host:port` until interrupted.

    Args:
        models: LIT models by name.
        datasets: LIT data sets by name.
        host: address to bind; 127.0.0.1 serves this machine only.
        port: TCP port; 0 picks a free one.
        server_type: "default" (the hardened threaded server; the only one).
        client_root: LIT's web client; LIT's own (or None) is served with local
            fonts (`offline_client.localize`).
        allow_loading: see `HardenedLitApp`.
        allow_new_data: see `HardenedLitApp`.
        datapoints_dir: see `HardenedLitApp`.
        limits: see `HardenedLitApp`; its time-outs and connection cap also bound the HTTP layer.
        **app_kw: `LitApp` keyword arguments (interpreters, layouts, LIT's
            server flags); others are ignored, as LIT's dev_server does.

    Raises:
        ValueError: a bad argument.
        OSError: the address can't be bound.
    """
    if server_type not in SERVER_TYPES:
        raise ValueError(f"server_type {server_type!r}; accepted: {', '.join(SERVER_TYPES)}.")
    if client_root is None or pathlib.Path(client_root).resolve() == offline_client.LIT_CLIENT_ROOT.resolve():
        try:
            client_root = str(offline_client.localize())
        except FileNotFoundError as error:
            logging.warning("%s Serving LIT's client, which loads its fonts from the internet.", error)
            client_root = str(offline_client.LIT_CLIENT_ROOT)
    accepted = dev_server.get_available_keywords(lit_app.LitApp)
    limits = limits or Limits()
    lit = HardenedLitApp(
        models,
        datasets,
        allow_loading=allow_loading,
        allow_new_data=allow_new_data,
        datapoints_dir=datapoints_dir,
        client_root=client_root,
        limits=limits,
        **{k: v for k, v in app_kw.items() if k in accepted},
    )
    server = make_server(lit, host, port, limits)
    url_host = f"[{host}]" if ":" in host else host
    print(f"LIT demo at http://{url_host}:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        lit.save_cache()


def run(main: Callable[[Sequence[str]], None]) -> None:
    """`absl.app.run(main)`, with set-up errors as one line and exit status 2, without a traceback.

    Set-up errors are what bad flags, files, models and devices raise:
    ValueError, OSError (a missing file, an address in use) and RuntimeError
    (from PyTorch and transformers, such as a checkpoint of another size).
    """

    def _main(argv: Sequence[str]) -> None:
        try:
            main(argv)
        except (ValueError, OSError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    absl_app.run(_main)
