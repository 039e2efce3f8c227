"""Fixtures of the ingest tests: a real HTTP server on 127.0.0.1 for the web feeds (no internet needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


# (status, headers, body); a dict or list body is sent as JSON
Response = tuple[int, dict[str, str], str | bytes | dict | list]
Responder = Callable[[Request], Response] | list[Response]


@dataclass
class LocalServer:
    """Routes by path prefix (longest wins); a list of responses is served in order, the last repeating."""

    url: str = ""
    routes: dict[str, Responder] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def route(self, prefix: str, responder: Responder) -> None:
        self.routes[prefix] = responder

    def hits(self, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def respond(self, req: Request) -> Response:
        with self.lock:
            self.requests.append(req)
            matches = [p for p in self.routes if req.path.startswith(p)]
            if not matches:
                return 404, {}, {"status": "NOT_FOUND", "error": f"no route for {req.path}"}
            responder = self.routes[max(matches, key=len)]
            if isinstance(responder, list):
                return responder.pop(0) if len(responder) > 1 else responder[0]
        return responder(req)


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            req = Request("GET", parts.path, dict(parse_qsl(parts.query)), dict(self.headers.items()))
            try:
                status, headers, body = server.respond(req)
            except Exception as exc:  # noqa: BLE001 - a broken responder must show as a 599, not hang the client
                status, headers, body = 599, {}, f"responder failed: {exc!r}"
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **headers}
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


@pytest.fixture
def local_server():
    """A threaded HTTP server on a free 127.0.0.1 port; configure with ``.route(prefix, responder)``."""
    state = LocalServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
