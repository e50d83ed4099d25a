"""A hardened LIT server: JSON errors, concurrent requests, opt-in file and model access.

LIT 1.3's own server answers a failed request with a 500 page that reflects the
error text unescaped, with a traceback; serves one request at a time; and lets
any client load models and data sets or read and write files by path. Here:

* every failed request gets JSON `{"error": message}` (400 bad input, 403
  refused, 404 unknown route or name, 413 too large; 500 only for server
  faults, without details), with `<`, `>` and `&` escaped, and the server keeps
  serving;
* requests are served by a threaded WSGI server, so a slow one (SIG) does not
  hold up the others;
* `/create_model` and `/create_dataset` work only with `allow_loading`;
  `/save_datapoints` and `/load_datapoints` only with a `datapoints_dir`,
  and only for paths inside it.
"""

import functools
import http
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
from werkzeug import serving
from werkzeug import wrappers

from lit_sig import offline_client

MAX_REQUEST_BYTES = 32 * 2**20
MAX_ERROR_CHARS = 2000
SERVER_TYPES = ("default", "basic")
DEVICES = ("cpu", "cuda")
_MALFORMED = (TypeError, IndexError, AttributeError)


class RequestError(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: http.HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: http.HTTPStatus, message: str) -> wrappers.Response:
    """JSON `{"error": message}` that no browser renders as markup."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    body = json.dumps({"error": message})
    body = body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return wrappers.Response(
        body,
        status=status,
        content_type="application/json; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )


def _describe(error: Exception) -> tuple[http.HTTPStatus, str]:
    """The status and message for an exception a request raised."""
    if isinstance(error, RequestError):
        return error.status, str(error)
    if isinstance(error, FileNotFoundError):
        return http.HTTPStatus.NOT_FOUND, "No such file."
    if isinstance(error, ValueError):
        return http.HTTPStatus.BAD_REQUEST, str(error)
    if isinstance(error, KeyError):
        return http.HTTPStatus.BAD_REQUEST, f"Missing or unknown key: {error.args[0] if error.args else ''}"
    if isinstance(error, _MALFORMED):
        return http.HTTPStatus.BAD_REQUEST, f"Malformed request ({type(error).__name__}): {error}"
    return http.HTTPStatus.INTERNAL_SERVER_ERROR, f"Internal error ({type(error).__name__}); see the server log."


class HardenedLitApp(lit_app.LitApp):
    """`LitApp` with JSON errors and opt-in loading and datapoint files (see the module doc)."""

    def __init__(
        self,
        models: lit_model.ModelMap,
        datasets: Mapping[str, lit_dataset.Dataset],
        *,
        allow_loading: bool = False,
        datapoints_dir: str | pathlib.Path | None = None,
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

        Raises:
            ValueError: `datapoints_dir` is not an existing folder.
        """
        self._allow_loading = allow_loading
        self._datapoints_dir = None
        if datapoints_dir is not None:
            self._datapoints_dir = pathlib.Path(datapoints_dir).resolve()
            if not self._datapoints_dir.is_dir():
                raise ValueError(f"--datapoints_dir: {datapoints_dir} is not an existing folder.")
        if not allow_loading:
            # No loaders: the UI offers no "load model/data set" controls.
            kw.setdefault("model_loaders", {})
            kw.setdefault("dataset_loaders", {})
        super().__init__(models, datasets, **kw)

    def make_handler(self, fn: Callable[..., Any]) -> Callable[..., wrappers.Response]:
        """LIT's handler for `fn`, with unknown names and errors answered as JSON."""
        handler = super().make_handler(fn)

        @functools.wraps(fn)
        def _handler(app: wsgi_app.App, request: wrappers.Request, environ: dict) -> wrappers.Response:
            try:
                self._check_names(request.args)
                return handler(app, request, environ)
            except Exception as error:  # pylint: disable=broad-except
                status, message = _describe(error)
                if status >= http.HTTPStatus.INTERNAL_SERVER_ERROR:
                    logging.exception("%s failed", request.path)
                else:
                    logging.warning("%s: %d %s", request.path, status, message[:200])
                return error_response(status, message)

        return _handler

    def _check_names(self, args: Mapping[str, str]) -> None:
        """Raises a 404 RequestError for a model, data set or component `args` name that isn't served."""
        names = {
            "model": self._models, "dataset_name": self._datasets,
            "interpreter": self._interpreters, "generator": self._generators,
        }
        for param, known in names.items():
            if param in args and args[param] not in known:
                raise RequestError(
                    http.HTTPStatus.NOT_FOUND, f"Unknown {param}; available: {sorted(known)}."
                )
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
                raise RequestError(http.HTTPStatus.FORBIDDEN, "The path must be a file inside the datapoints directory.")
        return str(resolved)

    def _create_model(self, data, model_name=None, **kw):
        self._check_loading()
        return super()._create_model(data, model_name=model_name, **kw)

    def _create_dataset(self, data, dataset_name=None, **kw):
        self._check_loading()
        return super()._create_dataset(data, dataset_name=dataset_name, **kw)

    def _save_datapoints(self, data, dataset_name=None, path=None, **kw):
        return super()._save_datapoints(data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _load_datapoints(self, unused_data, dataset_name=None, path=None, **kw):
        return super()._load_datapoints(unused_data, dataset_name=dataset_name, path=self._confine(path), **kw)

    def _push_ui_state(self, data, dataset_name=None, **kw):
        if self.ui_state_tracker is None:
            raise RequestError(http.HTTPStatus.NOT_FOUND, "UI state sync is off (it is for notebooks).")
        return super()._push_ui_state(data, dataset_name=dataset_name, **kw)

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        """WSGI entry: LIT's app, with any non-JSON error page replaced by JSON."""
        if (wrappers.Request(environ).content_length or 0) > MAX_REQUEST_BYTES:
            response = error_response(
                http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Requests are limited to {MAX_REQUEST_BYTES} bytes."
            )
        else:
            response = wrappers.Response.from_app(super().__call__, environ, buffered=True)
            if response.status_code >= 400 and response.mimetype != "application/json":
                status = http.HTTPStatus(response.status_code)
                response = error_response(status, status.phrase)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response(environ, start_response)


def check_device(device: str | None) -> None:
    """Raises ValueError unless `device` is None or one of `DEVICES` that this machine has."""
    if device is not None and device not in DEVICES:
        raise ValueError(f"--device={device!r}; accepted: {', '.join(DEVICES)}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device=cuda, but PyTorch sees no CUDA device here; use --device=cpu.")


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
    **app_kw,
) -> None:
    """Serves `HardenedLitApp(models, datasets, ...)` on `host:port` until interrupted.

    Args:
        models: LIT models by name.
        datasets: LIT data sets by name.
        host: address to bind; 127.0.0.1 serves this machine only.
        port: TCP port; 0 picks a free one.
        server_type: "default" or "basic" (the same threaded server).
        client_root: LIT's web client; LIT's own (or None) is served with local
            fonts (`offline_client.localize`).
        allow_loading: see `HardenedLitApp`.
        datapoints_dir: see `HardenedLitApp`.
        **app_kw: `LitApp` keyword arguments (interpreters, layouts, LIT's
            server flags); others are ignored, as LIT's dev_server does.

    Raises:
        ValueError: a bad argument.
        OSError: the address can't be bound.
    """
    if server_type not in SERVER_TYPES:
        raise ValueError(f"--server_type={server_type!r}; accepted: {', '.join(SERVER_TYPES)}.")
    if client_root is None or pathlib.Path(client_root).resolve() == offline_client.LIT_CLIENT_ROOT.resolve():
        try:
            client_root = str(offline_client.localize())
        except FileNotFoundError as error:
            logging.warning("%s Serving LIT's client, which loads its fonts from the internet.", error)
            client_root = str(offline_client.LIT_CLIENT_ROOT)
    accepted = dev_server.get_available_keywords(lit_app.LitApp)
    lit = HardenedLitApp(
        models,
        datasets,
        allow_loading=allow_loading,
        datapoints_dir=datapoints_dir,
        client_root=client_root,
        **{k: v for k, v in app_kw.items() if k in accepted},
    )
    server = serving.make_server(host, port, lit, threaded=True)
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
