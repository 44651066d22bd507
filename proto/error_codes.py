"""Every error code a part may send: one enum, shared by all parts and every boundary.

The code travels with each error: the `code` of MQTT error reports and command results, the
`x-edgefleet-error-code` trailing metadata of a gRPC error (node and front door), OpenAI's
`error.code` on HTTP. Consumers (the front door's failover, the CLI, the console, other sites)
decide on these values, never on a message's words; a new failure gets a new member here (and a
row in `error_table.py`), never a free-form string at the place that raises it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # -- a request that cannot be served (node errors, in results and replies) ------------------
    INVALID_REQUEST = "invalid_request"
    CONTEXT_OVERFLOW = "context_overflow"
    NOT_FOUND = "not_found"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    DRAINING = "draining"  # the node is draining for shutdown: send the request to another node
    OVER_BUDGET = "over_budget"
    ENGINE_FAILURE = "engine_failure"
    INTERNAL = "internal"
    STORAGE_FULL = "storage_full"  # the node's data directory has no room (SQLITE_FULL, ENOSPC)
    DEADLINE_EXCEEDED = "deadline_exceeded"  # no answer (or no first token) within the time allowed
    CANCELLED = "cancelled"  # the caller went away
    NOT_IMPLEMENTED = "not_implemented"  # a method this server does not offer (ask a node directly)
    # -- the front door: API keys and routing -----------------------------------------------------
    UNAUTHENTICATED = "unauthenticated"  # no API key, or one that is unknown, revoked or expired
    PERMISSION_DENIED = "permission_denied"  # a model or adapter the API key may not use
    RATE_LIMITED = "rate_limited"  # the API key is over its requests or tokens per minute
    NO_NODE = "no_node"  # no node of the fleet serves what the request asks for
    ALL_BUSY = "all_busy"  # every node that could serve the request is busy, and the wait ran out
    # -- a payload refused where it entered ------------------------------------------------------
    INVALID_PAYLOAD = "invalid_payload"
    WRONG_NODE = "wrong_node"
    WRONG_SITE = "wrong_site"
    WRONG_TARGET = "wrong_target"
    COMMAND_REFUSED = "command_refused"
    BAD_RESPONSE_TARGET = "bad_response_target"  # an MQTT 5 response topic / correlation data not answerable
    BAD_PROPERTIES = "bad_properties"  # MQTT 5 user properties: too many or too large
    REPLY_FAILED = "reply_failed"  # an answer that could not be published
    HANDLER_ERROR = "handler_error"  # an MQTT handler raised; the message is retried where it can be
    # -- sensor messages (the message, not the node, is at fault) --------------------------------
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    BAD_TOPIC_LEVEL = "bad_topic_level"
    UNKNOWN_RULE = "unknown_rule"
    INVALID_ANSWER = "invalid_answer"
    POISON_MESSAGE = "poison_message"  # answering it failed EDGEFLEET_SENSOR_MAX_ATTEMPTS times: parked, not retried
    # -- artifact transfers ------------------------------------------------------------------------
    MANIFEST_REFUSED = "manifest_refused"
    BAD_SIGNATURE = "bad_signature"
    CHUNK_REFUSED = "chunk_refused"
    DUPLICATE_CHUNK = "duplicate_chunk"
    DISK_ERROR = "disk_error"
    NO_SITE_KEY = "no_site_key"
    OLDER_VERSION = "older_version"
    ADAPTER_REFUSED = "adapter_refused"
    KNOWLEDGE_REFUSED = "knowledge_refused"
    MODEL_REFUSED = "model_refused"  # not a GGUF base model, or one too large for the site or a node
    UNKNOWN_ARTIFACT = "unknown_artifact"
    CHUNK_OUT_OF_RANGE = "chunk_out_of_range"
    # -- desired state ------------------------------------------------------------------------------
    TEMPLATE_ERROR = "template_error"
    UNSIGNED = "unsigned"  # no signature, where the receiver pins the site's key
    REPLAYED = "replayed"  # an older generation, or another document at the generation applied
    # -- operator commands (signed end to end, see proto/signing.py) --------------------------------
    UNKNOWN_OPERATOR = "unknown_operator"  # a signed command from an operator this site does not trust
    OPERATOR_REVOKED = "operator_revoked"  # a signed command from an operator whose identity is revoked
    STALE = "stale"  # a signed command whose timestamp is outside the accepted window
