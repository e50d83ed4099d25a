"""A hardened LIT server: JSON errors, concurrent requests, opt-in file and model access.

LIT 1.3's own server answers a failed request with a 500 page that reflects the
error text unescaped, with a traceback; serves one request at a time; and lets
any client load models and data sets or read and write files by path. Here:

* every failed request gets JSON `{"error": message}` (400 bad input, 403
  refused, 404 unknown route or name, 408 too slow a client, 413 too large, 503
  busy or past its deadline; 500 only for server faults, without details),
  with `<`, `>` and `&` escaped, and the server keeps serving; so do the
  errors of Python's HTTP layer (bad request lines, over-long headers);
* requests are served by a threaded WSGI server, so a slow one (SIG) does not
  hold up the others; the work is bounded (`server_limits.Limits`): inputs per
  request, token-rows per interpretation, heavy requests at once and queued,
  a deadline, and a read time-out; work stops when its client leaves;
* `/create_model` and `/create_dataset` work only with `allow_loading`;
  `/save_datapoints` and `/load_datapoints` only with a `datapoints_dir`,
  and only for paths inside it.
"""

import contextlib
import functools
import http
import inspect
import io
import json
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from absl import app as absl_app
from absl import logging
from lit_nlp import app as lit_app
from lit_nlp import dev_server
from lit_nlp.api import dataset as lit_dataset
from lit_nlp.api import model as lit_model
from lit_nlp.lib import wsgi_app
from werkzeug import serving, wrappers

from lit_sig.core import cancellation
from lit_sig.serving import offline_client, server_limits
from lit_sig.serving.server_limits import Limits, RequestError

MAX_REQUEST_BYTES = 32 * 2**20
MAX_ERROR_CHARS = 2000
SERVER_TYPES = ("default",)  # LIT's flag; its other types are not hardened.
DEVICES = ("cpu", "cuda")
INTERNAL_ERROR = "Internal error; see the server log."
_READ_CHUNK = 2**16
# LIT handlers (by function name) whose `inputs` run the model, and those that
# wait for a heavy-work slot.
_MODEL_HANDLERS = frozenset(
    {"_get_preds", "_get_interpretations", "_get_metrics", "_get_generated", "_annotate_new_data"}
)
_INPUT_HANDLERS = _MODEL_HANDLERS | {"_save_datapoints"}
_HEAVY_HANDLERS = frozenset({"_get_interpretations", "_get_generated"})


def error_body(message: str) -> bytes:
    """`{"error": message}` as JSON, with `<`, `>` and `&` escaped, cut to `MAX_ERROR_CHARS`."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    body = json.dumps({"error": message})
    return body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def error_response(
    status: http.HTTPStatus, message: str, headers: Mapping[str, str] | None = None
) -> wrappers.Response:
    """JSON `{"error": message}` that no browser renders as markup."""
    return wrappers.Response(
        error_body(message),
        status=status,
        content_type="application/json; charset=utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


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
    """The request body as JSON (None when empty); ValueError for malformed or too deeply nested JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("Malformed JSON: nested too deeply.") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError.
        raise ValueError(f"Malformed JSON: {error}") from None


def read_body(environ: dict) -> bytes:
    """Reads the whole body, counting bytes as they come (chunked or not).

    Raises:
        RequestError: 413 past `MAX_REQUEST_BYTES`, 400 for a malformed chunk or
            a body shorter than its Content-Length, 408 when the client stalls.
    """
    stream, chunked = environ["wsgi.input"], bool(environ.get("wsgi.input_terminated"))
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "Malformed Content-Length.") from None
    too_large = RequestError(
        http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Requests are limited to {MAX_REQUEST_BYTES} bytes."
    )
    if not chunked and length > MAX_REQUEST_BYTES:
        raise too_large
    parts, size = [], 0
    try:
        while chunked or size < length:
            part = stream.read(_READ_CHUNK if chunked else min(_READ_CHUNK, length - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
            if size > MAX_REQUEST_BYTES:
                raise too_large
    except TimeoutError:
        raise RequestError(http.HTTPStatus.REQUEST_TIMEOUT, "The request body did not arrive in time.") from None
    except OSError as error:  # werkzeug's dechunker: "Invalid chunk header".
        raise RequestError(http.HTTPStatus.BAD_REQUEST, f"Malformed chunked body: {error}") from None
    if not chunked and size < length:
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "The body is shorter than its Content-Length.")
    return b"".join(parts)


class HardenedLitApp(lit_app.LitApp):
    """`LitApp` with JSON errors and opt-in loading and datapoint files (see the module doc)."""

    def __init__(
        self,
        models: lit_model.ModelMap,
        datasets: Mapping[str, lit_dataset.Dataset],
        *,
        allow_loading: bool = False,
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
        self.heavy_gate = server_limits.HeavyGate(limits.max_heavy_requests, limits.max_queued_requests)
        self._allow_loading = allow_loading
        self._datapoints_dir = None
        if datapoints_dir is not None:
            self._datapoints_dir = pathlib.Path(datapoints_dir).resolve()
            if not self._datapoints_dir.is_dir():
                raise ValueError(f"datapoints_dir {datapoints_dir} is not an existing folder.")
        if not allow_loading:
            # No loaders: the UI offers no "load model/data set" controls.
            kw.setdefault("model_loaders", {})
            kw.setdefault("dataset_loaders", {})
        super().__init__(models, datasets, **kw)

    def make_handler(self, fn: Callable[..., Any]) -> Callable[..., wrappers.Response]:
        """LIT's handler for `fn`, with its request checked and bounded first, and errors answered as JSON."""
        handler = super().make_handler(fn)
        name = fn.__name__

        @functools.wraps(fn)
        def _handler(app: wsgi_app.App, request: wrappers.Request, environ: dict) -> wrappers.Response:
            try:
                self._check_names(request.args)
                data = parse_json(request.get_data())
                self._check_request(name, request.args, data)
                if name not in _MODEL_HANDLERS:
                    return handler(app, request, environ)
                stop = server_limits.stop_check(self._limits.request_deadline_s, environ.get("werkzeug.socket"))
                with contextlib.ExitStack() as stack:
                    if name in _HEAVY_HANDLERS:
                        stack.enter_context(self.heavy_gate.admit(stop))
                    stack.enter_context(cancellation.scope(stop))
                    return handler(app, request, environ)
            except Exception as error:  # pylint: disable=broad-except
                return _error_for(request, error)

        return _handler

    def _check_request(self, name: str, args: Mapping[str, str], data: Any) -> None:
        """Raises ValueError (or a RequestError) for a body that handler `name` can't take or the limits refuse."""
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"Malformed request: the body must be a JSON object, not a {type(data).__name__}.")
        if name not in _INPUT_HANDLERS:
            return
        inputs = (data or {}).get("inputs")
        if not isinstance(inputs, list):
            raise ValueError('Malformed request: the body must be a JSON object with a list of "inputs".')
        if name in _MODEL_HANDLERS and len(inputs) > self._max_inputs:
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{len(inputs)} inputs; the server takes at most {self._max_inputs} per request (max_inputs).",
            )
        examples = self._check_inputs(inputs, args.get("dataset_name"))
        config = data.get("config")
        if config is not None and not isinstance(config, dict):
            raise ValueError('Malformed request: "config" must be a JSON object.')
        server_limits.check_numbers(config or {})
        if name == "_get_interpretations" and "interpreter" in args and "model" in args:
            self._check_cost(args["interpreter"], args["model"], examples, config or {})

    def _check_inputs(self, inputs: list, dataset_name: str | None) -> list[dict]:
        """The inputs' example data; ValueError for ids not in the data set or malformed examples."""
        index = self._datasets[dataset_name].index if dataset_name in self._datasets else None
        examples = []
        for entry in inputs:
            if isinstance(entry, str):
                if index is None or entry not in index:
                    raise ValueError(f"Unknown example id {entry[:80]!r} in data set {dataset_name!r}.")
                entry = index[entry]
            elif not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
                raise ValueError('Malformed request: each input must be an example id or {"id", "data": {...}}.')
            examples.append(entry["data"])
        return examples

    def _check_cost(self, interpreter: str, model: str, examples: list[dict], config: dict) -> None:
        """Raises a 413 RequestError if the interpretation would run more token-rows than allowed."""
        cost = server_limits.request_cost(self._interpreters[interpreter], self._models[model], examples, config)
        if cost > self._limits.max_request_cost:
            raise RequestError(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"This request would run {cost:,} token-rows (the sum over inputs of tokens x model rows);"
                f" the server's limit is {self._limits.max_request_cost:,} (max_request_cost). Send fewer or"
                " shorter inputs, or fewer Interpolation steps.",
            )

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
        return super()._create_model(data, model_name=model_name, **kw)

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

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        """WSGI entry: the body read within limits, then LIT's app, with any non-JSON error page replaced by JSON."""
        try:
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
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response(environ, start_response)


def _check_init_args(loader: tuple[Callable, Any] | None, name: str | None, data: Any) -> None:
    """ValueError if a loader without an init spec can't take the config's arguments (LIT would raise TypeError)."""
    config = (data or {}).get("config")
    if loader is None or loader[1] is not None or not isinstance(config, dict):
        return
    args = {k: v for k, v in config.items() if k != "new_name"}
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
    return error_response(status, message, getattr(error, "headers", None))


class JsonErrorRequestHandler(serving.WSGIRequestHandler):
    """werkzeug's handler with a read time-out, and JSON for the errors `http.server` answers itself."""

    timeout = Limits.read_timeout_s

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Bad request lines, over-long lines or headers: `{"error": ...}` with nosniff, then close."""
        status = http.HTTPStatus(code)
        self.log_error("code %d, message %s", code, message)
        body = error_body(f"{status.phrase}: {message or explain or status.description}")
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # Garbage, not HTTP/0.9: answer with headers.
        self.send_response(code, status.phrase)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)
        self.close_connection = True


def check_device(device: str | None) -> None:
    """Raises ValueError unless `device` is None or one of `DEVICES` that this machine has."""
    if device is not None and device not in DEVICES:
        raise ValueError(f"--device={device!r}; accepted: {', '.join(DEVICES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device=cuda, but PyTorch sees no CUDA device here; use --device=cpu.")


def make_server(app: HardenedLitApp, host: str, port: int, read_timeout_s: float) -> serving.BaseWSGIServer:
    """A threaded werkzeug server for `app` whose connections time out after `read_timeout_s` of silence."""
    handler = type("RequestHandler", (JsonErrorRequestHandler,), {"timeout": read_timeout_s})
    return serving.make_server(host, port, app, threaded=True, request_handler=handler)


def serve(
    models: lit_model.ModelMap,
    datasets: Mapping[str, lit_dataset.Dataset],
    *,
    host: str = "127.0.0.1",
    port: int = 5432,
    server_type: str = "default",
    client_root: str | None = None,
    allow_loading: bool = False,
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
        datapoints_dir: see `HardenedLitApp`.
        limits: see `HardenedLitApp`; `read_timeout_s` is set on every connection.
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
        datapoints_dir=datapoints_dir,
        client_root=client_root,
        limits=limits,
        **{k: v for k, v in app_kw.items() if k in accepted},
    )
    server = make_server(lit, host, port, limits.read_timeout_s)
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
