"""`fleet adapters` as a table: an installed artifact reads `installed`, and knowledge collections are listed."""

from __future__ import annotations

import io

from edgefleet.fleet.adapter_commands import print_adapters


def test_installed_transfers_show_no_empty_bar_and_knowledge_rows_are_listed() -> None:
    installed = {"kind": "adapter", "name": "alarm", "version": "1", "have": 0, "total": 8, "state": "installed"}
    fetching = {"kind": "knowledge", "name": "manual", "version": "2", "have": 3, "total": 6, "state": "fetching"}
    data = {
        "manifests": [],
        "nodes": {
            "dev-bench": {
                "desired": {"alarm": "1"},
                "loaded": {"alarm": "1"},
                "knowledge_desired": {"manual": "2"},
                "knowledge_loaded": {"manual": "1"},
                "transfers": {"adapter/alarm": installed, "knowledge/manual": fetching},
            }
        },
    }
    out = io.StringIO()
    print_adapters(data, out)
    lines = out.getvalue().splitlines()
    adapter = next(line for line in lines if " alarm " in line)
    assert adapter.rstrip().endswith("installed") and "[" not in adapter and "0/8" not in adapter
    knowledge = next(line for line in lines if " manual " in line)
    assert "knowledge" in knowledge and "2" in knowledge and "fetching [######......] 3/6" in knowledge
