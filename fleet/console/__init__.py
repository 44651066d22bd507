"""The fleet management console: a web client of the orchestrator, like the CLI."""
