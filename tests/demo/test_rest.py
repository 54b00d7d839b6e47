"""Rest: the demo's client of Buildbot's REST API, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bbenroll.demo.errors import DemoError
from bbenroll.demo.rest import Rest
from tests.helpers.net import free_port

pytestmark = pytest.mark.network


class FakeMaster(BaseHTTPRequestHandler):
    """Answers like Buildbot's /api/v2/: JSON documents, JSON-RPC on POST."""

    posted: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/v2/masters":
            self._send(200, json.dumps({"masters": [{"masterid": 1}]}).encode())
        elif self.path == "/api/v2/starting":
            self._send(200, b"<html>not yet</html>", "text/html")
        elif self.path == "/api/v2/builds/1/steps/2/logs/stdio/raw":
            self._send(200, b"hello\nworld\n", "text/plain")
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.posted.append(request)
        if request["params"].get("builderid") == 2:
            self._send(502, b"<html>bad gateway</html>", "text/html")
        elif request["params"].get("builderid") == 1:
            self._send(200, json.dumps({"jsonrpc": "2.0", "id": 1, "result": [7, {"1": 8}]}).encode())
        else:
            error = {"code": -32602, "message": "no such builder"}
            self._send(400, json.dumps({"jsonrpc": "2.0", "id": 1, "error": error}).encode())


@pytest.fixture
def master() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(port, the JSON-RPC requests it received) of a FakeMaster on 127.0.0.1."""
    posted: list[dict[str, Any]] = []
    handler = type("Handler", (FakeMaster,), {"posted": posted})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], posted
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_get_and_raw(master) -> None:
    rest = Rest(master[0])
    assert rest.get("masters") == {"masters": [{"masterid": 1}]}
    assert rest.raw("builds/1/steps/2/logs/stdio/raw") == b"hello\nworld\n"


def test_try_get_is_none_until_the_answer_is_there(master) -> None:
    rest = Rest(master[0])
    assert rest.try_get("masters") == {"masters": [{"masterid": 1}]}
    assert rest.try_get("starting") is None  # not JSON (yet)
    assert rest.try_get("nothing-here") is None  # HTTP 404
    assert Rest(free_port()).try_get("masters") is None  # nothing listening


def test_rpc_posts_json_rpc_and_returns_the_result(master) -> None:
    rest, posted = Rest(master[0]), master[1]
    assert rest.rpc("forceschedulers/force", "force", builderid=1) == [7, {"1": 8}]
    assert posted == [{"jsonrpc": "2.0", "method": "force", "id": 1, "params": {"builderid": 1}}]


def test_rpc_error_is_one_line(master) -> None:
    rest = Rest(master[0])
    with pytest.raises(DemoError) as e:
        rest.rpc("forceschedulers/force", "force", builderid=99)
    assert str(e.value) == "the master refused to force a build: no such builder"


def test_rpc_without_json_or_without_a_master_is_one_line(master) -> None:
    with pytest.raises(DemoError) as e:
        Rest(master[0]).rpc("forceschedulers/force", "force", builderid=2)  # an HTML error page
    assert str(e.value) == "the master's REST API gave no JSON answer to force"
    with pytest.raises(DemoError) as e:
        Rest(free_port()).rpc("forceschedulers/force", "force", builderid=1)  # nothing listening
    assert str(e.value).startswith("cannot reach the master's REST API to force a build: ")
    assert "Connection refused" in str(e.value)


def test_loopback_never_goes_through_a_proxy(master, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing there: using it would fail
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    rest = Rest(master[0])  # made with the proxy variables set
    assert rest.get("masters") == {"masters": [{"masterid": 1}]}
