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
  before any handler runs (`server_requests`, `server_checks`);
* a prediction is cached only under the hash of the data it was computed from
  (`server_cache.DataKeyedCache`), for the served data sets' examples: no
  client can make another see a result that is not its data's;
* requests are served by a threaded server; work is bounded
  (`server_limits.Limits`): inputs per request, token-rows per interpretation
  or generation (LIT's own components priced by what they run), heavy requests
  at once, admitted only when they are expected to finish before their deadline
  (`server_admission`; else 503 with Retry-After at once), a deadline; work
  stops when its client leaves;
* `/create_model` and `/create_dataset` work only with `allow_loading`;
  `/post_new_data`, `/fetch_new_data` and `/remove_new_data` only with
  `allow_new_data` (and within `max_new_data_bytes`); `/save_datapoints` and
  `/load_datapoints` only with a `datapoints_dir`, and only for paths inside it
  (`server_optin`).
"""

import contextlib
import functools
import http
import io
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
from lit_nlp.components import salience_clustering
from lit_nlp.lib import caching, serialize, utils, wsgi_app
from werkzeug import wrappers

from lit_sig.core import cancellation, progress
from lit_sig.serving import offline_client, server_admission, server_http, server_limits, server_optin, server_requests
from lit_sig.serving.server_cache import DataKeyedCache
from lit_sig.serving.server_http import MAX_REQUEST_BYTES, error_body, error_response, read_body  # noqa: F401
from lit_sig.serving.server_limits import Limits, RequestError
from lit_sig.serving.server_requests import parse_json  # noqa: F401

SERVER_TYPES = ("default",)  # LIT's flag; its other types are not hardened.
DEVICES = ("cpu", "cuda")
INTERNAL_ERROR = "Internal error; see the server log."
API_METHODS = ("GET", "POST")
STATIC_METHODS = ("GET", "HEAD")


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


class HardenedLitApp(server_requests.RequestChecks, server_optin.OptInRoutes, lit_app.LitApp):
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

    def _warm(self, rate: float, projections: bool, indicator: Callable | None) -> None:
        """LIT's warm start (predictions, then projections), run on the data-keyed caches."""
        if projections:
            rate = 1.0
        if rate > 0:
            self._warm_start(rate=rate, progress_indicator=indicator or (lambda examples: examples))
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
                data = server_requests.parse_json(request.get_data())
                cost, component = self._check_request(name, args, data)
                outputs = self._run(name, fn, data, args, environ, cost, component)
                return app.respond(request, serialize.to_json(outputs, simple=simple), "application/json", 200)
            except Exception as error:  # pylint: disable=broad-except
                return _error_for(request, error)

        return _handler

    def _run(self, name: str, fn: Callable, data: Any, args: dict, environ: dict, cost: int, component: Any) -> Any:
        """Runs handler `fn`; model work under the deadline, heavy work through the admission gate."""
        if name not in server_requests.MODEL_HANDLERS:
            return fn(data, **args)
        arrived = environ.get(server_http.ARRIVED_KEY) or time.monotonic()
        deadline_s = self._limits.request_deadline_s
        stop = server_limits.stop_check(deadline_s, environ.get("werkzeug.socket"), arrived)
        with contextlib.ExitStack() as stack:
            if name in server_requests.HEAVY_HANDLERS and cost > self._limits.light_request_cost:
                ticket = stack.enter_context(self.admission.admit(cost, stop, arrived + deadline_s))
                stack.enter_context(progress.scope(ticket.rows))
            stack.enter_context(cancellation.scope(stop))
            if isinstance(component, salience_clustering.SalienceClustering):
                stack.enter_context(self._clustering_lock)
            return fn(data, **args)

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
