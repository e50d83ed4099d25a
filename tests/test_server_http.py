"""The hardened server's HTTP layer, over real loopback connections to an in-process server.

Framing (Content-Length, chunks), JSON for the HTTP layer's own errors, total
time limits on reading a request (slow clients are cut off), closing after an
early answer, and the cap on connections. Time limits here are 1 s, so every
test ends in a few seconds.
"""

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lit_sig.serving import server, server_http
from tests.helpers import connect, local_server, raw_exchange, read_answer

LIMITS = server.Limits(read_timeout_s=5, header_timeout_s=1, body_timeout_s=1, max_connections=3)


@pytest.fixture(scope="module")
def quick_server(tiny_model) -> Iterator[str]:
    with local_server(tiny_model, LIMITS) as (base, _):
        yield base


def post(body: bytes, headers: str) -> bytes:
    return b"POST /get_info HTTP/1.1\r\nHost: x\r\n" + headers.encode() + b"\r\n" + body


@pytest.mark.parametrize(
    "request_bytes, status, word",
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "URI Too Long"),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Header"),
        (post(b"zz\r\n", "Transfer-Encoding: chunked\r\n"), 400, "chunk"),
        (post(b"{}", "Content-Length: 100\r\n"), 400, "shorter"),
        (b"GET /static/%00../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "NUL"),
        # Issue 23: framing that two parsers could read differently.
        (post(b"{}", "Content-Length: 2\r\nContent-Length: 3\r\n"), 400, "Conflicting Content-Length"),
        (post(b"{}", "Content-Length: -5\r\n"), 400, "Malformed Content-Length"),
        (post(b"{}", "Content-Length: +2\r\n"), 400, "Malformed Content-Length"),
        (post(b"{}", "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n"), 400, "both"),
        (post(b"{}", "Transfer-Encoding: gzip\r\n"), 400, "only chunked"),
        (post(b"2;ext=1\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked\r\n").replace(b";", b"\xff"), 400, "hex"),
    ],
)
def test_protocol_errors_get_json(quick_server, request_bytes, status, word):
    got_status, headers, body = raw_exchange(quick_server, request_bytes)
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["x-content-type-options"] == "nosniff"
    assert word.lower() in json.loads(body)["error"].lower()


@pytest.mark.parametrize(
    "body",
    [
        b"2\r\n{}\r\n0\r\n\r\n",
        b"2;ext=1\r\n{}\r\n0\r\n\r\n",  # A chunk extension (RFC 9112 7.1.1).
        b'1;a=1;b="x y"\r\n{\r\n1\r\n}\r\n0\r\nTrailer: t\r\n\r\n',  # Quoted extensions and a trailer.
        b'0a\r\n{"abc": 1}\r\n000\r\n\r\n',  # Leading zeros.
    ],
)
def test_chunked_bodies_as_rfc_9112_allows_are_read(quick_server, body):
    status, _, answer = raw_exchange(quick_server, post(body, "Transfer-Encoding: chunked\r\n"))
    assert status == 200 and "models" in json.loads(answer)


def test_identical_content_lengths_are_one(quick_server):
    status, _, answer = raw_exchange(quick_server, post(b"{}", "Content-Length: 2\r\nContent-Length: 2\r\n"))
    assert status == 200 and "models" in json.loads(answer)


class Trickle:
    """Sends `data` one byte every `interval_s` on `sock`, until done or the server stops taking it
    (or, with `until_answered`, until an answer arrives)."""

    def __init__(self, sock: socket.socket, data: bytes, interval_s: float = 0.1, until_answered: bool = False):
        self.sent = 0
        self._sock, self._data, self._interval_s, self._until_answered = sock, data, interval_s, until_answered
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for i in range(len(self._data)):
                if self._until_answered and select.select([self._sock], [], [], 0)[0]:
                    return
                self._sock.send(self._data[i : i + 1])
                self.sent += 1
                time.sleep(self._interval_s)
        except OSError:
            pass  # Cut off.

    def join(self) -> None:
        self._thread.join(timeout=30)


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_slow_client_is_cut_off_at_the_time_limit(quick_server, phase):
    """One byte every 0.1 s never goes silent for the 5 s read time-out, but the headers (or the body) must
    arrive within 1 s in all: the server answers 408 and closes long before the client is done."""
    headers = b"POST /get_info HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n" + b"X-Pad: y\r\n" * 20 + b"\r\n"
    with connect(quick_server, timeout=30) as sock:
        if phase == "headers":
            trickle = Trickle(sock, headers, until_answered=True)
        else:
            sock.sendall(headers)
            trickle = Trickle(sock, b" " * 200, until_answered=True)
        status, _, body = read_answer(sock)
        sent_when_answered = trickle.sent
        trickle.join()
    assert status == 408 and "did not arrive in time" in json.loads(body)["error"]
    assert phase in json.loads(body)["error"]
    # 1 s of a 0.1 s trickle is about 10 bytes, far from the whole request.
    assert sent_when_answered < len(headers if phase == "headers" else b" " * 200) // 2


def test_a_stalled_body_times_out_with_408(quick_server):
    """Content-Length larger than what arrives: the body's time limit answers instead of waiting forever."""
    with connect(quick_server) as sock:
        sock.sendall(post(b"{}", "Content-Length: 100\r\n"))  # And then nothing.
        status, _, body = read_answer(sock)
    assert status == 408 and "in time" in json.loads(body)["error"]


def test_chunked_body_over_the_limit_is_413_and_the_connection_closes(quick_server, monkeypatch):
    """Over the byte limit, the client is told at once (413) and the server stops reading within `DRAIN_S`,
    though the client goes on sending chunks (it would take 30 s to send them all)."""
    monkeypatch.setattr(server_http, "MAX_REQUEST_BYTES", 10_000)
    monkeypatch.setattr(server_http, "DRAIN_S", 0.5)
    chunk = b"%x\r\n%s\r\n" % (1000, b"a" * 1000)
    with connect(quick_server, timeout=30) as sock:
        sock.sendall(b"POST /get_info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 11)
        trickle = Trickle(sock, chunk * 300, interval_s=0.0001)  # 300 chunks, a byte at a time.
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
        except ConnectionResetError:
            pass  # Closed with unread data: also closed.
        sent_when_closed = trickle.sent
        trickle.join()
    assert answer.startswith(b"HTTP/1.1 413") and b"10000 bytes" in answer and b"Connection: close" in answer
    assert sent_when_closed < len(chunk) * 300
    status, _, body = raw_exchange(quick_server, post(b"2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding: chunked\r\n"))
    assert status == 200 and "models" in json.loads(body)


def test_connections_beyond_the_cap_get_503(tiny_model):
    """3 connections at most: 3 idle ones hold the server's threads, a 4th is answered 503 at once and closed;
    once they are gone, requests are served again."""
    limits = server.Limits(header_timeout_s=30, max_connections=3)
    with local_server(tiny_model, limits) as (base, _):
        idle = [connect(base) for _ in range(3)]
        try:
            for sock in idle:
                sock.sendall(b"GET / HTTP/1.1\r\n")  # Headers never finished.
            time.sleep(0.2)
            status, headers, body = raw_exchange(base, b"GET /get_info HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 503 and headers["retry-after"] == "1"
            assert "3 connections" in json.loads(body)["error"]
        finally:
            for sock in idle:
                sock.close()
        for _ in range(100):
            status, _, body = raw_exchange(base, b"GET /get_info HTTP/1.1\r\nHost: x\r\n\r\n")
            if status == 200:
                break
            time.sleep(0.05)
        assert status == 200 and "models" in json.loads(body)
