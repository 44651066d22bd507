"""Requests that protobuf cannot parse get INVALID_ARGUMENT naming the field, not UNKNOWN.

A string field with invalid UTF-8 makes `FromString` raise DecodeError before any servicer code
runs, and grpc answers UNKNOWN with protobuf's message, which names no field. The interceptor
here parses requests itself: a request that does not parse reaches the method as `Malformed`,
carrying a message that names the field (found by walking the wire format against the message
descriptor), and `refuse_malformed` turns it into INVALID_ARGUMENT. Every servicer that uses the
interceptor calls `refuse_malformed` first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from edgefleet.plumbing.grpc_errors import abort
from edgefleet.proto.error_codes import ErrorCode


class Malformed:
    """Stands in for a request that did not parse."""

    def __init__(self, message: str) -> None:
        self.message = message


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` is gone in 7
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "", depth: int = 0) -> str | None:
    """The path (e.g. `messages[1].content`) of the first string field that is not UTF-8, or None."""
    pos = 0
    counts: dict[str, int] = {}
    while pos < len(data) and depth < 32:
        try:
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
                continue
            if wire == 1:
                pos += 8
                continue
            if wire == 5:
                pos += 4
                continue
            if wire != 2:
                return None
            size, pos = _varint(data, pos)
            payload, pos = data[pos : pos + size], pos + size
        except ValueError:
            return None
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue
        name = field.name
        if _repeated(field):
            index = counts.get(name, 0)
            counts[name] = index + 1
            name = f"{name}[{index}]"
        path = f"{prefix}{name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:  # map<string, …>: key 1, value 2
                path = f"{prefix}{field.name}"
            found = bad_utf8_field(field.message_type, payload, f"{path}.", depth + 1)
            if found is not None:
                return found
    return None


def _parser(cls: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            try:
                field = bad_utf8_field(cls.DESCRIPTOR, data)
            except Exception:  # finding the field is a courtesy; the refusal must not fail
                field = None
            if field is not None:
                return Malformed(f"{field} is not valid UTF-8 text")
            return Malformed(f"the request is not a valid {cls.DESCRIPTOR.full_name}: {e}")

    return parse


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Parses requests of the named services itself, so a bad one arrives as `Malformed`."""

    def __init__(self, request_types: dict[str, type[Message]]) -> None:
        """`request_types`: full method name (`/pkg.Service/Method`) → request message class."""
        self._parsers = {method: _parser(cls) for method, cls in request_types.items()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        parser = self._parsers.get(handler_call_details.method)
        if handler is None or parser is None:
            return handler
        return handler._replace(request_deserializer=parser)


def request_types(service_descriptor: Any, module: Any) -> dict[str, type[Message]]:
    """Method → request class for every method of a service in a generated `_pb2` module."""
    return {
        f"/{service_descriptor.full_name}/{m.name}": getattr(module, m.input_type.name)
        for m in service_descriptor.methods
    }


async def refuse_malformed(request: object, context: grpc.aio.ServicerContext) -> None:
    """Abort with INVALID_ARGUMENT (ErrorCode INVALID_REQUEST) if the request did not parse."""
    if isinstance(request, Malformed):
        await abort(context, ErrorCode.INVALID_REQUEST, request.message)
