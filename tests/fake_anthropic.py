"""A scripted Anthropic Messages API server on 127.0.0.1 — real HTTP (stdlib `http.server` in a thread).

The SDK's HTTP layer (httpx2) talks to it exactly as it would to api.anthropic.com: point a client (or
`autotts discover --base-url`) at `server.url`. Each POST /v1/messages takes the next item of the script:

* a dict — a Message (build it with `message(...)`), served with status 200;
* `Err(status, type, message, headers)` — an error response such as 529 overloaded or 429 with retry-after;
* `Delay(seconds, item)` — wait, then serve the item (to provoke client timeouts);
* a callable `f(body) -> item` — decide from the request body.

Every request body and its headers are kept (`requests`, `headers`). `on_request(index, body)` runs before a
response is chosen (tests use it to block or kill the client mid-session); if it returns an item, that item is
served instead of the script's next one. An exhausted script answers 400 so that a test fails loudly rather than
hanging.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Err:
    status: int
    type: str = "api_error"
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delay:
    seconds: float
    item: Any


def usage(input_tokens: int = 1000, output_tokens: int = 200, cache_write: int = 500, cache_read: int = 300
          ) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def tool_use(name: str, input: Any, id: str | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": input}


def message(*content: dict[str, Any], stop_reason: str | None = None, use: dict[str, int] | None = None,
            model: str = "claude-sonnet-4-6") -> dict[str, Any]:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {"id": f"msg_{next(_ids):04d}", "type": "message", "role": "assistant", "model": model,
            "content": list(content), "stop_reason": stop_reason, "stop_sequence": None,
            "usage": use or usage()}


class FakeAnthropic:
    """Serve a script of Messages API responses on 127.0.0.1:<free port>."""

    def __init__(self, script: list[Any] | None = None):
        self.script: deque[Any] = deque(script or [])
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.on_request: Callable[[int, dict[str, Any]], Any] | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                if path.rstrip("/") != "/v1/messages":
                    self._send(404, {"type": "error", "error": {"type": "not_found_error",
                                                                 "message": f"no route {path}"}})
                    return
                body = json.loads(raw or b"{}")
                with fake._lock:
                    index = len(fake.requests)
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.paths.append(path)
                item = None if fake.on_request is None else fake.on_request(index, body)
                if item is None:
                    with fake._lock:
                        item = fake.script.popleft() if fake.script else Err(
                            400, "invalid_request_error", "fake server: the script is exhausted")
                while True:
                    if callable(item) and not isinstance(item, Err | Delay | dict):
                        item = item(body)
                    elif isinstance(item, Delay):
                        time.sleep(item.seconds)
                        item = item.item
                    else:
                        break
                if isinstance(item, Err):
                    self._send(item.status, {"type": "error", "error": {"type": item.type, "message": item.message}},
                               item.headers)
                else:
                    self._send(200, item)

            def _send(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.send_header("request-id", f"req_fake_{len(fake.requests)}")
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-anthropic", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *items: Any) -> None:
        with self._lock:
            self.script.extend(items)

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- reading what the client sent ---------------------------------------------------------------------------
    def tool_results(self, index: int) -> list[dict[str, Any]]:
        """The tool_result blocks of the last user message of request `index`."""
        last = self.requests[index]["messages"][-1]
        return [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]

    def first_user_text(self, index: int) -> str:
        first = self.requests[index]["messages"][0]["content"]
        return first if isinstance(first, str) else "".join(b.get("text", "") for b in first)
