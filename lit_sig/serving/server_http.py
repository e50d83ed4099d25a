"""The HTTP layer of the hardened LIT server: framing, time limits, connection cap, JSON errors.

* `DeadlineReader` reads a connection under two bounds: silence
  (`read_timeout_s`) and a total time per phase: the request line and headers
  must arrive within `header_timeout_s`, the body within `body_timeout_s`, so a
  client sending a byte every few seconds is cut off (408) instead of holding a
  thread.
* `RequestHandler` refuses ambiguous framing (two different Content-Length
  values, a negative or non-numeric one, Transfer-Encoding other than chunked,
  both at once) with 400, and reads chunked bodies with `Dechunker`, which
  accepts chunk extensions and trailers (RFC 9112).
* `read_body` reads the whole body, counting bytes as they come; after an
  error before its end, the rest is discarded for at most `DRAIN_S` and the
  connection closed.
* `Server` serves each connection on its own thread, at most `max_connections`
  at once (more get 503 and are closed).

Every error answered here is JSON `{"error": message}` with `<`, `>` and `&`
escaped.
"""

import http
import io
import json
import math
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from absl import logging
from werkzeug import serving, wrappers

from lit_sig.serving.server_limits import Limits, RequestError

MAX_REQUEST_BYTES = 32 * 2**20
MAX_ERROR_CHARS = 2000
DRAIN_S = 1.0  # After an early answer, how long the rest of a body is read (so the client sees the answer).
READER_KEY = "lit_sig.reader"  # The connection's DeadlineReader, in the WSGI environ.
ARRIVED_KEY = "lit_sig.arrived"  # time.monotonic() when the request's headers had arrived.
_READ_CHUNK = 2**16
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_LINES = 64
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def error_body(message: str, details: Mapping[str, Any] | None = None) -> bytes:
    """`{"error": message, **details}` as JSON, with `<`, `>` and `&` escaped, the message cut to `MAX_ERROR_CHARS`."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "..."
    body = json.dumps({"error": message, **(details or {})})
    return body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def error_response(
    status: http.HTTPStatus,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> wrappers.Response:
    """JSON `{"error": message, **details}` that no browser renders as markup."""
    return wrappers.Response(
        error_body(message, details),
        status=status,
        content_type="application/json; charset=utf-8",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


class ReadTimeout(TimeoutError):
    """A request (or part of it) did not arrive in time; the message says which limit."""


class DeadlineReader(io.RawIOBase):
    """A socket's reads, each bounded by the silence limit and by the current phase's deadline."""

    def __init__(self, sock: socket.socket, silence_s: float):
        super().__init__()
        self._sock = sock
        self._silence_s = silence_s
        self._deadline = math.inf
        self._what = "request"

    def readable(self) -> bool:
        return True

    def expire_in(self, seconds: float, what: str) -> None:
        """From now on, reads fail `seconds` from now (`what` names the phase in the error)."""
        self._deadline = time.monotonic() + seconds
        self._what = what

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ReadTimeout(f"The {self._what} did not arrive in time.")
        self._sock.settimeout(min(self._silence_s, remaining))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise ReadTimeout(f"The {self._what} did not arrive in time.") from None
        finally:
            self._sock.settimeout(self._silence_s)  # For writing the answer.


class Dechunker(io.RawIOBase):
    """A `Transfer-Encoding: chunked` body (RFC 9112 7.1): extensions ignored, trailers read and dropped.

    Raises OSError for a malformed chunk.
    """

    def __init__(self, rfile: Any):
        super().__init__()
        self._rfile = rfile
        self._left = 0  # Bytes left in the current chunk.
        self._done = False

    def readable(self) -> bool:
        return True

    def _line(self) -> bytes:
        line = self._rfile.readline(_MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise OSError("Invalid chunk header: a line too long or cut off.")
        return line.rstrip(b"\r\n")

    def _next_chunk(self) -> None:
        size = self._line().split(b";", 1)[0].strip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size):
            raise OSError(f"Invalid chunk header: size {size[:20]!r} is not hexadecimal.")
        self._left = int(size, 16)
        if self._left == 0:
            for _ in range(_MAX_TRAILER_LINES):
                if not self._line():
                    self._done = True
                    return
            raise OSError(f"Invalid chunked body: more than {_MAX_TRAILER_LINES} trailer lines.")

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0:
            self._next_chunk()
            if self._done:
                return 0
        data = self._rfile.read(min(len(buffer), self._left))
        if not data:
            raise OSError("Invalid chunked body: it ends inside a chunk.")
        buffer[: len(data)] = data
        self._left -= len(data)
        if self._left == 0 and self._rfile.readline(3) not in (b"\r\n", b"\n"):
            raise OSError("Invalid chunked body: a chunk does not end with CRLF.")
        return len(data)


def read_body(environ: dict) -> bytes:
    """Reads the whole body, counting bytes as they come (chunked or not).

    Raises:
        RequestError: 413 past `MAX_REQUEST_BYTES`, 400 for a malformed chunk or
            a body shorter than its Content-Length, 408 when the client stalls or
            runs past the body's time limit.
    """
    stream, chunked = environ["wsgi.input"], bool(environ.get("wsgi.input_terminated"))
    length = int(environ.get("CONTENT_LENGTH") or 0)  # RequestHandler checked it.
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
    except TimeoutError as error:
        raise RequestError(http.HTTPStatus.REQUEST_TIMEOUT, str(error) or "The body did not arrive in time.") from None
    except OSError as error:  # Dechunker: "Invalid chunk header".
        raise RequestError(http.HTTPStatus.BAD_REQUEST, f"Malformed chunked body: {error}") from None
    if not chunked and size < length:
        raise RequestError(http.HTTPStatus.BAD_REQUEST, "The body is shorter than its Content-Length.")
    return b"".join(parts)


def end_reading(environ: dict) -> None:
    """Lets the rest of the request be read (and discarded) for at most `DRAIN_S`, then the connection closes."""
    reader = environ.get(READER_KEY)
    if reader is not None:
        reader.expire_in(DRAIN_S, "rest of the request")


def _framing_error(headers: Any) -> str | None:
    """Why the Content-Length / Transfer-Encoding headers can't frame a body unambiguously, or None."""
    lengths = [v.strip() for v in headers.get_all("Content-Length") or []]
    encodings = [v.strip().lower() for v in headers.get_all("Transfer-Encoding") or []]
    if any(not (v.isascii() and v.isdigit()) for v in lengths):
        return "Malformed Content-Length: it must be a non-negative decimal integer."
    if len({int(v) for v in lengths}) > 1:
        return "Conflicting Content-Length headers."
    if encodings and encodings != ["chunked"]:
        return "Unsupported Transfer-Encoding; only chunked is accepted."
    if encodings and lengths:
        return "A request may not have both Content-Length and Transfer-Encoding."
    return None


class RequestHandler(serving.WSGIRequestHandler):
    """werkzeug's handler with total time limits on reading, strict framing, and JSON for its own errors.

    `limits` is set on the subclass that `make_server` builds.
    """

    limits: Limits = Limits()

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.limits.read_timeout_s)
        self.reader = DeadlineReader(self.connection, self.limits.read_timeout_s)
        self.rfile.close()  # The socket stays open; reads go through the reader.
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        """http.server's, with the request line and headers read under `header_timeout_s` (408 past it)."""
        self.command, self.path, self.requestline, self.request_version = "", "", "", "HTTP/1.0"
        self.reader.expire_in(self.limits.header_timeout_s, "request line and headers")
        try:
            if not self._read_head():
                return
        except ReadTimeout as error:
            self.send_error(http.HTTPStatus.REQUEST_TIMEOUT, str(error))
            return
        getattr(self, "do_" + self.command)()  # werkzeug's run_wsgi, for every method.
        self.wfile.flush()

    def _read_head(self) -> bool:
        """Reads and parses the request line and headers; False when answered (an error) or closed."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(http.HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
        if not self.raw_requestline:
            self.close_connection = True
            return False
        return self.parse_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if problem := _framing_error(self.headers):
            self.send_error(http.HTTPStatus.BAD_REQUEST, problem)
            return False
        self.reader.expire_in(self.limits.body_timeout_s, "request body")
        self.arrived = time.monotonic()
        return True

    def make_environ(self) -> dict:
        environ = super().make_environ()
        if environ.get("wsgi.input_terminated"):
            environ["wsgi.input"] = Dechunker(self.rfile)
        environ[READER_KEY] = self.reader
        environ[ARRIVED_KEY] = self.arrived
        return environ

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Bad request lines, over-long lines or headers, bad framing, slow clients: JSON with nosniff, then close."""
        status = http.HTTPStatus(code)
        self.log_error("code %d, message %s", code, message)
        body = error_body(f"{status.phrase}: {message or explain or status.description}")
        if self.request_version in ("HTTP/0.9", ""):
            self.request_version = "HTTP/1.0"  # Garbage, not HTTP/0.9: answer with headers.
        try:
            self.send_response(code, status.phrase)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass  # The client has gone.
        self.close_connection = True


class Server(serving.ThreadedWSGIServer):
    """werkzeug's threaded server, with at most `max_connections` connections served at once."""

    def __init__(self, host: str, port: int, app: Any, limits: Limits):
        handler = type("BoundedRequestHandler", (RequestHandler,), {"limits": limits})
        super().__init__(host, port, app, handler=handler)
        self._connections = threading.BoundedSemaphore(limits.max_connections)
        self._max_connections = limits.max_connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def _refuse(self, request: socket.socket) -> None:
        logging.warning("Refused a connection: %d are open (max_connections).", self._max_connections)
        body = error_body(f"The server is busy: {self._max_connections} connections are open; retry later.")
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        try:
            request.settimeout(1)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        self.shutdown_request(request)


def make_server(app: Any, host: str, port: int, limits: Limits) -> Server:
    """A threaded server for `app` on `host:port` under `limits` (time-outs, connection cap)."""
    return Server(host, port, app, limits)
