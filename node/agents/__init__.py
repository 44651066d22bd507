"""Site agents on a node: agent rules run a model ↔ tool loop under a pure policy, each effect once (see `ledger`)."""
