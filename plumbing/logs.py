"""Structured logs: one JSON object a line, with the node id and the current request id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_node_id = "-"

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = _node_id
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        node = extras.pop("node_id", "-")
        rid = extras.pop("request_id", "-")
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            tail += "\n" + self.formatException(record.exc_info)
        return f"{time.strftime('%H:%M:%S')} {record.levelname[0]} [{node} {rid}] {record.getMessage()} {tail}".rstrip()


def configure_logging(node_id: str, level: str = "INFO", fmt: str = "json") -> None:
    """Install the handler on the root logger (stderr). Call once at process start."""
    global _node_id
    _node_id = node_id
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("edgefleet.llama").setLevel(max(logging.WARNING, root.level))
