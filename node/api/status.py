"""The node's typed errors on gRPC: the error's ErrorCode decides the status (proto/error_table.py)
and travels in the trailing metadata."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from edgefleet.node import errors
from edgefleet.plumbing.grpc_errors import abort

log = logging.getLogger("edgefleet.node.grpc")


async def refuse(context: grpc.aio.ServicerContext, error: errors.EdgefleetError) -> NoReturn:
    """End the call with the error's status, message and ErrorCode."""
    log.info("request refused", extra={"code": error.code.value, "reason": str(error)})
    await abort(context, error.code, str(error))
