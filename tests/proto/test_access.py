"""The one table of who may do what (proto/access.py): complete, least-privilege, and worded."""

from __future__ import annotations

import pytest

from edgefleet.proto import commands
from edgefleet.proto.access import (
    CERT_KINDS,
    COMMAND_ROLE,
    FRONT_DOOR_GRANTS,
    METHOD_PERMISSION,
    MQTT_GRANTS,
    NODE_GRANTS,
    Kind,
    Permission,
    Principal,
    Role,
    allowed,
    command_role,
    deny_message,
    kind_ou,
    principal_from_ous,
    role_ou,
)
from edgefleet.proto.topics import Topics
from edgefleet.proto.v1 import inference_pb2


def test_every_inference_method_needs_a_permission() -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert methods == set(METHOD_PERMISSION), "a new gRPC method must be placed in the grants table"


def test_every_command_op_has_a_least_role() -> None:
    ops = {commands.op_of(r) for r in commands.REQUEST_TYPES}
    assert ops == set(COMMAND_ROLE), "a new command op must be placed in COMMAND_ROLE"
    assert command_role("no-such-op") is Role.ADMIN


@pytest.mark.parametrize("kind", [Kind.SENSOR, Kind.NODE, Kind.UNKNOWN])
def test_sensors_nodes_and_unknown_certificates_may_call_nothing(kind: Kind) -> None:
    who = Principal("x", kind)
    for p in Permission:
        assert not allowed(NODE_GRANTS, who, p)
        assert not allowed(FRONT_DOOR_GRANTS, who, p)


def test_operator_roles_are_ordered() -> None:
    viewer = Principal("v", Kind.OPERATOR, Role.VIEWER)
    operator = Principal("o", Kind.OPERATOR, Role.OPERATOR)
    assert allowed(NODE_GRANTS, viewer, Permission.GENERATE)
    assert not allowed(NODE_GRANTS, viewer, Permission.KNOWLEDGE_WRITE)
    assert allowed(NODE_GRANTS, operator, Permission.KNOWLEDGE_WRITE)
    assert allowed(NODE_GRANTS, Principal("orchestrator", Kind.ORCHESTRATOR), Permission.KNOWLEDGE_WRITE)
    assert not allowed(FRONT_DOOR_GRANTS, Principal("k", Kind.API_KEY), Permission.METRICS)
    assert command_role("keys-create") is Role.ADMIN and command_role("status") is Role.VIEWER


def test_a_refusal_names_the_identity_and_what_it_lacks() -> None:
    viewer = Principal("vera", Kind.OPERATOR, Role.VIEWER)
    msg = deny_message(viewer, "call Ingest", "node n1", NODE_GRANTS, Permission.KNOWLEDGE_WRITE)
    assert msg == "operator 'vera' (role viewer) may not call Ingest on node n1: it needs role operator or higher"
    msg = deny_message(Principal("s1", Kind.SENSOR), "call Generate", "node n1", NODE_GRANTS, Permission.GENERATE)
    assert msg == "sensor 's1' may not call Generate on node n1: sensor identities have no such grant"
    assert "re-enroll" in deny_message(Principal("old", Kind.UNKNOWN), "call Generate", "node n1")


def test_certificate_ous_give_the_principal() -> None:
    assert principal_from_ous("a", [kind_ou("operator"), role_ou("admin")]) == Principal("a", Kind.OPERATOR, Role.ADMIN)
    assert principal_from_ous("a", [kind_ou("operator")]).role is Role.VIEWER  # no role: the least
    assert principal_from_ous("s", [kind_ou("sensor"), role_ou("admin")]) == Principal("s", Kind.SENSOR)
    assert principal_from_ous("x", []).kind is Kind.UNKNOWN
    assert principal_from_ous("x", [kind_ou("api-key")]).kind is Kind.UNKNOWN  # not a certificate kind
    assert principal_from_ous("x", [kind_ou("root")]).kind is Kind.UNKNOWN


def test_every_certificate_kind_has_mqtt_grants_naming_real_topics() -> None:
    t = Topics.for_site("lab")
    special = {"sensor_filters", "node_outputs", "actuator_topics", "root#", "artifacts_for"}
    for kind in CERT_KINDS:
        assert MQTT_GRANTS[kind], kind
        for g in MQTT_GRANTS[kind]:
            assert g.access in ("read", "write", "readwrite")
            assert g.topic in special or callable(getattr(t, g.topic, None)), g
