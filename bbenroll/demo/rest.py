"""A tiny client for the demo master's REST API (Buildbot's ``/api/v2/``), standard library only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from bbenroll.demo.errors import DemoError


class Rest:
    """A tiny client for the master's REST API (loopback: never through a proxy)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v2/"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, timeout: float = 10) -> Any:
        with self.opener.open(self.base + path, timeout=timeout) as response:
            return json.load(response)

    def raw(self, path: str) -> bytes:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read()

    def try_get(self, path: str) -> Any:
        """For polling: None until the answer is there (and never a long wait)."""
        try:
            return self.get(path, timeout=2)
        except (OSError, ValueError):  # URLError, HTTPError, refused, not JSON yet
            return None

    def rpc(self, path: str, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "method": method, "id": 1, "params": params}).encode()
        request = urllib.request.Request(  # noqa: S310 (always http://127.0.0.1)
            self.base + path, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            try:
                with self.opener.open(request, timeout=30) as response:
                    answer = json.load(response)
            except urllib.error.HTTPError as e:
                answer = json.loads(e.read() or b"{}")
        except ValueError:  # an HTML error page, or a truncated answer
            raise DemoError(f"the master's REST API gave no JSON answer to {method}") from None
        except OSError as e:  # refused, reset, timed out
            why = getattr(e, "reason", None) or e
            raise DemoError(f"cannot reach the master's REST API to {method} a build: {why}") from None
        if not isinstance(answer, dict):
            raise DemoError(f"the master's REST API gave an unexpected answer to {method}")
        if "error" in answer:
            error = answer["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise DemoError(f"the master refused to {method} a build: {message}")
        return answer.get("result")
