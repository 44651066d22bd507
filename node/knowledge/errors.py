"""Typed errors of the knowledge store; each message tells a person what to do next.

They derive from the node's errors too (`InvalidRequest`, `NotFound`), so the one place that maps
node errors to gRPC codes and MQTT payloads handles them without knowing this package.
"""

from __future__ import annotations

from edgefleet.node.errors import EdgefleetError, InvalidRequest, NotFound, PermissionDenied


class KnowledgeError(EdgefleetError):
    """Base of every error the knowledge store raises on purpose."""


class InvalidInput(KnowledgeError, InvalidRequest):
    """A document, id, query or parameter is malformed or out of range."""


class NotFoundError(KnowledgeError, NotFound):
    """The collection (or document, or chunk) does not exist in this store."""


class CorruptDatabase(KnowledgeError):
    """The SQLite file is not a database or fails its integrity check."""


class EmbedderMismatch(KnowledgeError):
    """A collection's vectors were made by another embedder than the one the store runs with."""


class BackendUnavailable(KnowledgeError):
    """The vector backend asked for (sqlite-vec) cannot be loaded on this machine."""


class ReadOnlyCollection(KnowledgeError, PermissionDenied):
    """The collection was installed from a signed knowledge bundle: only a new bundle changes it."""
