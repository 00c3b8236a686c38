"""A small fault-injecting HTTP proxy in front of the simulator, for bad-input tests.

Rules match a path suffix and query parameters and apply one action a limited number of times:
  truncate            cut the JSON body in half
  drop_field:NAME     remove NAME from every object in a JSON list
  set:NAME=VALUE      set NAME to VALUE (a string, as venues send numbers) in every object
  set_at:KEY=K:NAME=VALUE   set NAME to VALUE only in the objects whose KEY starts with K (one row)
  status:CODE[:RA]    answer HTTP CODE (with Retry-After: RA seconds) instead of forwarding
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests


@dataclass
class Rule:
    path: str
    action: str
    params: dict = field(default_factory=dict)
    times: int = 1_000_000
    hits: int = 0


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.log: list[tuple[str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                proxy._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, action: str, times: int = 1_000_000, **params) -> Rule:
        rule = Rule(path, action, {k: str(v) for k, v in params.items()}, times)
        self.rules.append(rule)
        return rule

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _match(self, path: str, query: dict) -> Rule | None:
        for r in self.rules:
            if r.hits >= r.times or not path.endswith(r.path):
                continue
            if all(query.get(k, [None])[0] == v for k, v in r.params.items()):
                r.hits += 1
                return r
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        rule = self._match(parts.path, query)
        if rule and rule.action.startswith("status:"):
            bits = rule.action.split(":")
            code = int(bits[1])
            h.send_response(code)
            if len(bits) > 2:
                h.send_header("Retry-After", bits[2])
            body = json.dumps({"code": -1003 if code == 429 else -1000, "msg": "injected"}).encode()
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            self.log.append((h.path, code))
            return
        up = requests.get(self.upstream + h.path, timeout=30)
        body = up.content
        if rule:
            body = self._mutate(rule.action, body)
        h.send_response(up.status_code)
        for k in ("Content-Type", "Retry-After", "X-MBX-USED-WEIGHT-1M"):
            if k in up.headers:
                h.send_header(k, up.headers[k])
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
        self.log.append((h.path, up.status_code))

    @staticmethod
    def _mutate(action: str, body: bytes) -> bytes:
        if action == "truncate":
            return body[: len(body) // 2]
        data = json.loads(body)
        rows = data if isinstance(data, list) else [data]
        if action.startswith("drop_field:"):
            name = action.split(":", 1)[1]
            for r in rows:
                r.pop(name, None)
        elif action.startswith("set_at:"):
            match, assign = action.split(":", 2)[1:]
            key, want = match.split("=", 1)
            name, value = assign.split("=", 1)
            for r in rows:
                if str(r.get(key)).startswith(want):
                    r[name] = value
        elif action.startswith("set:"):
            name, value = action.split(":", 1)[1].split("=", 1)
            for r in rows:
                r[name] = value
        return json.dumps(data).encode()
