"""Tool calls on the node: tool formats, the grammar that enforces a call, the stream parser."""
