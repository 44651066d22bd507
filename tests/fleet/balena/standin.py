"""A stand-in for balena's API on 127.0.0.1, answering exactly the requests balena-sdk 17.3 makes for
`edgefleet fleet balena sync` (recorded by pointing the real SDK at a logging server):

    GET   /v7/application?$filter=(slug eq 'S') or (uuid eq 'S')&$select=id
    GET   /v7/device?$orderby=device_name asc&$select=…&$filter=belongs_to__application eq N&$expand=…
    POST  /v7/device_environment_variable {"device": N, "name": K, "value": V}   (409 "unique" if it exists)
    PATCH /v7/device_environment_variable?$filter=(device eq N) and (name eq 'K') {"value": V}

Anything else is answered 400 and kept in `unexpected`, for the test to fail on.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

DEVICE_QUERY = (
    "$orderby=device_name asc&$select=id,uuid,device_name,is_online,os_version"
    "&$filter=belongs_to__application eq {app}"
    "&$expand=is_of__device_type($select=slug),is_running__release($select=commit),"
    "device_tag($select=tag_key,value),device_environment_variable($select=name,value)"
)
ENV_FILTER = r"/v7/device_environment_variable\?\$filter=\(device eq (\d+)\) and \(name eq '([^']*)'\)"


def device(
    id: int, name: str, slug: str, tags: dict[str, str] | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "id": id,
        "uuid": f"{id:032x}",
        "device_name": name,
        "is_online": id % 2 == 1,
        "os_version": "balenaOS 6.0.13",
        "is_of__device_type": [{"slug": slug}],
        "is_running__release": [{"commit": "0123456789abcdef"}],
        "device_tag": [{"tag_key": k, "value": v} for k, v in (tags or {}).items()],
        "device_environment_variable": [{"name": k, "value": v} for k, v in (env or {}).items()],
    }


class BalenaStandIn:
    def __init__(self, token: str, fleets: dict[str, int], devices: dict[int, list[dict[str, Any]]]) -> None:
        self.token, self.fleets, self.devices = token, fleets, devices
        self.requests: list[tuple[str, str, Any]] = []
        self.unexpected: list[str] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with (429, 500…)
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                path = unquote(self.path)
                status, answer = standin.handle(self.command, path, body, self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BalenaStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def env(self, device_id: int) -> dict[str, str]:
        for rows in self.devices.values():
            for d in rows:
                if d["id"] == device_id:
                    return {v["name"]: v["value"] for v in d["device_environment_variable"]}
        raise KeyError(device_id)

    def handle(self, method: str, path: str, body: Any, auth: str) -> tuple[int, Any]:
        with self._lock:
            self.requests.append((method, path, body))
            if self.fail_next:
                status = self.fail_next.pop(0)
                return status, "Too Many Requests" if status == 429 else "failure"
            if auth != f"Bearer {self.token}":
                return 401, "Unauthorized"
            return self._route(method, path, body)

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        m = re.fullmatch(r"/v7/application\?\$filter=\(slug eq '([^']*)'\) or \(uuid eq '([^']*)'\)&\$select=id", path)
        if method == "GET" and m and m.group(1) == m.group(2):
            app = self.fleets.get(m.group(1))
            return 200, {"d": [] if app is None else [{"id": app}]}
        m = re.fullmatch(r"/v7/device\?(.*)", path)
        if method == "GET" and m:
            for app in self.devices:
                # OData options in any order (the SDK merges its own with the caller's)
                if sorted(m.group(1).split("&")) == sorted(DEVICE_QUERY.format(app=app).split("&")):
                    return 200, {"d": self.devices[app]}
        if method == "POST" and path == "/v7/device_environment_variable" and set(body) == {"device", "name", "value"}:
            env = self._env_rows(body["device"])
            if any(v["name"] == body["name"] for v in env):
                return 409, '"Unique key constraint violated"'
            env.append({"name": body["name"], "value": body["value"]})
            return 201, {"id": len(env), **body}
        m = re.fullmatch(
            r"/v7/device_environment_variable\?\$filter=\(device eq (\d+)\) and \(name eq '([^']*)'\)", path
        )
        if method == "PATCH" and m and set(body) == {"value"}:
            for v in self._env_rows(int(m.group(1))):
                if v["name"] == m.group(2):
                    v["value"] = body["value"]
            return 200, "OK"
        self.unexpected.append(f"{method} {path} {body}")
        return 400, "unexpected request"

    def _env_rows(self, device_id: int) -> list[dict[str, str]]:
        for rows in self.devices.values():
            for d in rows:
                if d["id"] == device_id:
                    rows_env: list[dict[str, str]] = d["device_environment_variable"]
                    return rows_env
        return []
