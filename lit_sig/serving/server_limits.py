"""Bounds on the work a LIT server takes on: inputs, cost, concurrency and time.

`Limits` holds the numbers; `request_cost` prices an interpretation request in
token-rows (the tokens of every model row it will run; `server_admission`
admits heavy requests by it); `stop_check` tells `lit_sig.core.cancellation` when a
request's deadline has passed or its client has gone.
"""

import dataclasses
import http
import math
import os
import re
import select
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lit_nlp.api import model as lit_model
from lit_nlp.api import types as lit_types
from lit_nlp.components import gradient_maps, lime_explainer

from lit_sig.core import adaptive, cancellation
from lit_sig.lit import interpreters, protocol

MAX_LIME_SAMPLES = 1024
CLIENT_GONE = "The client closed its connection."
_POLL_S = 0.25
_WORDS = re.compile(r"\w+|[^\w\s]")
# Rows one adaptive path may use: both ends plus two per refinement round.
_ADAPTIVE_ROWS = 2 + 2 * getattr(adaptive, "DEFAULT_MAX_ROUNDS", 64)


class RequestError(Exception):
    """A request the server refuses, with its HTTP status, extra headers and extra JSON fields (`details`)."""

    def __init__(
        self,
        status: http.HTTPStatus,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.details = dict(details or {})


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server accepts; every field must be positive.

    Attributes:
        max_inputs: inputs per request that runs the model (the served data
            sets' sizes raise it, so the UI can always predict a whole data set).
        max_request_cost: token-rows per interpretation or generation request:
            the sum over the examples it runs of tokens x model rows (IG: steps;
            SIG: tokens x steps).
        light_request_cost: interpretations and generations of at most this
            many token-rows (one gradient pass, a short IG) run at once, like
            predictions, without waiting for a heavy slot.
        max_heavy_requests: heavier ones running at once.
        max_queued_requests: heavy requests waiting for a slot; more get 503.
        max_queue_wait_s: a heavy request whose expected wait for a slot is
            longer gets 503 with Retry-After at once.
        request_deadline_s: seconds after its arrival at which a request's
            work is abandoned (503); a heavy request is admitted only if
            expected to finish within `server_admission.SAFETY` of it.
        read_timeout_s: seconds a connection may stay silent while the server
            reads a request.
        header_timeout_s: seconds in all to send a request line and headers.
        body_timeout_s: seconds in all to send a request body.
        max_connections: connections served at once; more get 503.
        max_new_data_bytes: bytes of JSON that `/post_new_data` may keep in all
            (when posting is on).
    """

    max_inputs: int = 1000
    max_request_cost: int = 2_000_000
    light_request_cost: int = 5_000
    max_heavy_requests: int = dataclasses.field(default_factory=_cores)
    max_queued_requests: int = 16  # The UI sends several interpretations at once on a selection.
    max_queue_wait_s: float = 10.0
    request_deadline_s: float = 50.0
    read_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 64
    max_new_data_bytes: int = 4 * 2**20

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{field.name} must be a positive number, got {value!r}.")


def integer_in(config: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    """`config[key]` as an integer in [low, high] (None if absent); ValueError otherwise.

    Accepts a JSON integer, an integral float, or a string of ASCII digits (LIT's
    text fields); not full-width digits, booleans or exponents.
    """
    if config.get(key) is None:
        return None
    value = config[key]
    message = f"{key!r} must be an integer in [{low}, {high}], got {str(value)[:40]!r}."
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and re.fullmatch(r"[+-]?[0-9]+(\.0*)?", text)):
            raise ValueError(message)
        value = float(text)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise ValueError(message)
    if not low <= value <= high:
        raise ValueError(message)
    return int(value)


def _scalar_range(interpreter: Any, key: str) -> tuple[int, int]:
    spec = interpreter.config_spec().get(key)
    return int(getattr(spec, "min_val", 1) or 1), int(getattr(spec, "max_val", 100) or 100)


def rows_per_token_and_input(interpreter: Any, config: Mapping[str, Any]) -> tuple[int, int]:
    """`(per_token, per_input)`: an input of T tokens costs T x (per_token x T + per_input) token-rows.

    Validates the config keys that set the cost (LIT's own IG and LIME included);
    raises ValueError naming the accepted values.
    """
    if hasattr(interpreter, "rows_per_token_and_input"):  # The captum bridge's interpreters.
        return interpreter.rows_per_token_and_input(config)
    if isinstance(interpreter, interpreters.SequentialIntegratedGradients | interpreters.IntegratedGradients):
        settings = interpreter.parse_config(dict(config))
        rows = _ADAPTIVE_ROWS if settings.adaptive else settings.steps
        if settings.method == interpreters.EXACT_METHOD:
            rows = 1  # Each token at its baseline, forward only.
        sequential = isinstance(interpreter, interpreters.SequentialIntegratedGradients)
        return (rows, 1) if sequential else (0, rows + 1)
    if isinstance(interpreter, gradient_maps.IntegratedGradients):
        key = gradient_maps.INTERPOLATION_KEY
        steps = integer_in(config, key, *_scalar_range(interpreter, key))
        return 0, (steps or 30) + 1
    if isinstance(interpreter, lime_explainer.LIME):
        samples = integer_in(config, lime_explainer.NUM_SAMPLES_KEY, 1, MAX_LIME_SAMPLES)
        return 0, (samples or 256) + 1
    return 0, 1


def _unwrapped(model: lit_model.Model) -> lit_model.Model:
    while isinstance(model, lit_model.ModelWrapper):
        model = model.wrapped
    return model


def token_counts(model: lit_model.Model, examples: Sequence[Mapping[str, Any]]) -> list[int]:
    """Tokens per example: the model's own count (`token_counts`), its tokenizer (truncated as it truncates),
    else words + 2."""
    if (count := protocol.find_capability(model, "token_counts")) is not None:
        return list(count(examples))
    fields = [k for k, v in model.input_spec().items() if isinstance(v, lit_types.TextSegment)]
    base = _unwrapped(model)
    tokenizer, max_length = getattr(base, "tokenizer", None), getattr(base, "max_length", None)
    counts = []
    for example in examples:
        texts = [example[f] for f in fields if isinstance(example.get(f), str)]
        if tokenizer is not None and 0 < len(texts) <= 2:
            truncate = isinstance(max_length, int)
            ids = tokenizer(*texts, truncation=truncate, max_length=max_length if truncate else None)["input_ids"]
            counts.append(len(ids))
        else:
            counts.append(sum(len(_WORDS.findall(t)) for t in texts) + 2)
    return counts


def cost_of(rows: tuple[int, int], counts: Sequence[int]) -> int:
    """Token-rows of running `rows = (per_token, per_input)` on inputs of `counts` tokens."""
    per_token, per_input = rows
    return sum(t * (per_token * t + per_input) for t in counts)


def request_cost(
    interpreter: Any, model: lit_model.Model, examples: Sequence[Mapping[str, Any]], config: Mapping[str, Any]
) -> int:
    """Token-rows an interpretation request will run (see `Limits.max_request_cost`)."""
    return cost_of(rows_per_token_and_input(interpreter, config), token_counts(model, examples))


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` (readable with nothing to read); data waiting means it is still there."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def stop_check(deadline_s: float, sock: socket.socket | None, start: float | None = None) -> cancellation.StopCheck:
    """A check that returns why to stop once `deadline_s` after `start` (default now) has passed or the client has gone.

    The socket is polled at most every 0.25 s.
    """
    deadline = (time.monotonic() if start is None else start) + deadline_s
    next_poll = 0.0

    def should_stop() -> str | None:
        nonlocal next_poll
        now = time.monotonic()
        if now > deadline:
            return f"The request ran past the server's deadline of {deadline_s:g} s."
        if sock is not None and now >= next_poll:
            next_poll = now + _POLL_S
            if client_gone(sock):
                return CLIENT_GONE
        return None

    return should_stop
