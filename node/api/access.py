"""Who may call this node's gRPC methods: proto/access.py's node grants, applied to the caller's
verified certificate. Sensors and nodes may call nothing; operators need role operator (and the
node's leave, EDGEFLEET_OPERATORS_MAY_WRITE_KNOWLEDGE) to change knowledge; only the orchestrator
always may. Health and reflection stay open to any site certificate that is not revoked."""

from __future__ import annotations

from edgefleet.plumbing.site_tls import AccessCheck, Peer, Refusal
from edgefleet.proto.access import (
    METHOD_PERMISSION,
    NODE_GRANTS,
    Kind,
    Permission,
    allowed,
    deny_message,
    method_name,
)
from edgefleet.proto.error_codes import ErrorCode


def node_access(node_id: str, operators_may_write_knowledge: bool) -> AccessCheck:
    where = f"node {node_id}"

    def check(peer: Peer | None, method: str) -> Refusal | None:
        permission = METHOD_PERMISSION.get(method)
        if permission is None:
            return None
        if peer is None:
            return ErrorCode.UNAUTHENTICATED, f"{method_name(method)} on {where} needs a site client certificate"
        who = peer.principal
        if not allowed(NODE_GRANTS, who, permission):
            return ErrorCode.PERMISSION_DENIED, deny_message(
                who, f"call {method_name(method)}", where, NODE_GRANTS, permission
            )
        if permission is Permission.KNOWLEDGE_WRITE and who.kind is Kind.OPERATOR and not operators_may_write_knowledge:
            return ErrorCode.PERMISSION_DENIED, (
                f"{who} may not call {method_name(method)} on {where}: this node lets only the orchestrator "
                "change its knowledge (EDGEFLEET_OPERATORS_MAY_WRITE_KNOWLEDGE=false); push a knowledge bundle"
            )
        return None

    return check
