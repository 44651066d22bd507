"""Contracts between edgefleet parts: gRPC protos and (later) the MQTT topic contract."""
