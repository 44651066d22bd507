"""The node side of the MQTT control plane: presence, telemetry, desired state."""
