"""Site orchestrator (the control-plane issue builds it)."""
