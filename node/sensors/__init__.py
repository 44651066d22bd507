"""Sensor rules on a node: MQTT messages in, answers out, each answered once (see `ledger`)."""
