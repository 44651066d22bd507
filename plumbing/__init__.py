"""Shared machinery every part runs the same way: MQTT link, request/response, SQLite, logs, settings."""
