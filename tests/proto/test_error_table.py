"""The one error table: every ErrorCode has a complete row that each boundary can use."""

from __future__ import annotations

import grpc
import pytest

from edgefleet.proto.error_codes import ErrorCode
from edgefleet.proto.error_table import (
    ERROR_CODE_KEY,
    ERROR_TABLE,
    code_for_grpc_status,
    code_for_http_status,
    parse_code,
    row,
)

OPENAI_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "rate_limit_error", "server_error"}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_has_a_complete_row(code: ErrorCode) -> None:
    r = row(code)
    assert r.grpc in grpc.StatusCode.__members__ and r.grpc != "OK", r
    assert 400 <= r.http <= 599, r
    assert r.openai_type in OPENAI_TYPES, r
    # the caller's mistake is never worth another node; a busy or failing node may be
    assert not r.failover or r.http == 429 or r.http >= 500, r
    assert (r.http >= 500) == (r.openai_type == "server_error"), r


def test_the_table_has_no_row_without_a_code() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)


def test_failover_reads_the_code_not_the_status() -> None:
    # both are UNAVAILABLE on gRPC; the front door tells them apart by code
    assert row(ErrorCode.DRAINING).grpc == row(ErrorCode.UNAVAILABLE).grpc == "UNAVAILABLE"
    assert row(ErrorCode.DRAINING).failover and row(ErrorCode.QUEUE_FULL).failover
    assert not row(ErrorCode.INVALID_REQUEST).failover and not row(ErrorCode.NOT_FOUND).failover


def test_api_key_refusals_map_to_their_http_and_grpc_statuses() -> None:
    assert (row(ErrorCode.UNAUTHENTICATED).http, row(ErrorCode.UNAUTHENTICATED).grpc) == (401, "UNAUTHENTICATED")
    assert (row(ErrorCode.PERMISSION_DENIED).http, row(ErrorCode.PERMISSION_DENIED).grpc) == (403, "PERMISSION_DENIED")
    assert (row(ErrorCode.RATE_LIMITED).http, row(ErrorCode.RATE_LIMITED).grpc) == (429, "RESOURCE_EXHAUSTED")


def test_codes_parse_back_and_unknown_ones_are_none() -> None:
    assert ERROR_CODE_KEY.lower() == ERROR_CODE_KEY  # gRPC metadata keys are lower case
    for code in ErrorCode:
        assert parse_code(code.value) is code and parse_code(code.value.encode()) is code
    assert parse_code("no-such-code") is None and parse_code(None) is None and parse_code(3) is None


def test_errors_without_a_code_get_one_from_their_status() -> None:
    assert code_for_grpc_status("UNAVAILABLE") is ErrorCode.UNAVAILABLE
    assert code_for_grpc_status("DEADLINE_EXCEEDED") is ErrorCode.DEADLINE_EXCEEDED
    assert code_for_grpc_status("UNKNOWN") is ErrorCode.INTERNAL
    for name in grpc.StatusCode.__members__:  # a code that stands for the status, or a generic one
        code = code_for_grpc_status(name)
        assert row(code).grpc == name or code in (ErrorCode.INTERNAL, ErrorCode.INVALID_REQUEST), name
    assert code_for_http_status(404) is ErrorCode.NOT_FOUND and code_for_http_status(413) is ErrorCode.PAYLOAD_TOO_LARGE
    assert code_for_http_status(405) is ErrorCode.INVALID_REQUEST and code_for_http_status(500) is ErrorCode.INTERNAL
