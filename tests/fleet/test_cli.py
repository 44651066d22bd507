"""The operator CLI against a real node, run as the installed `edgefleet` command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import BIN, NodeProcess, free_port
from tests.fleet.site_support import operator_env


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgefleet"), *args], capture_output=True, text=True, timeout=120, env=operator_env()
    )


def test_ask_streams_the_answer_to_stdout_and_the_usage_line_to_stderr(node: NodeProcess) -> None:
    r = edgefleet(
        "--node",
        node.address,
        "ask",
        "Is 7.1 mm/s vibration on a pump bad?",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "tokens/s" not in r.stdout, "stdout is the answer only, for pipes"
    usage = r.stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert usage.startswith("[length] prompt ") and "completion 12 tokens" in usage and "tokens/s" in usage


def test_ask_with_a_json_schema_file(node: NodeProcess, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(schema))
    r = edgefleet(
        "--node",
        node.address,
        "ask",
        "Is the pump fine? Answer in JSON.",
        "--json-schema",
        str(f),
        "--temperature",
        "0",
        "--max-tokens",
        "30",
        "--system",
        "You answer in JSON.",
    )
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["ok"], bool)


def test_node_info_as_table_and_json(node: NodeProcess) -> None:
    r = edgefleet("--node", node.address, "node-info")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct (llama, Q4_1" in r.stdout and "x86-dev" in r.stdout
    j = edgefleet("--node", node.address, "node-info", "--json")
    data = json.loads(j.stdout)
    assert data["model"]["quantization"] == "Q4_1" and data["slots_total"] == 4


def test_clear_errors(node: NodeProcess, tmp_path: Path) -> None:
    r = edgefleet("--node", f"127.0.0.1:{free_port()}", "--timeout", "3", "node-info")
    assert r.returncode == 1 and "cannot reach a node" in r.stderr
    r = edgefleet("--node", node.address, "ask", "hi", "--json-schema", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "cannot read JSON schema file" in r.stderr
    r = edgefleet("--node", node.address, "ask", "hi", "--max-tokens", "0")
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "max_tokens" in r.stderr


def test_init_site_writes_a_key_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from edgefleet.proto.artifacts import SiteKey, build_manifest, load_public_key, verify

    r = edgefleet("fleet", "init-site", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    key, pub = tmp_path / "default.key", tmp_path / "default.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    blob = tmp_path / "x.bin"
    blob.write_bytes(b"x" * 5000)
    verify(SiteKey.load(key).sign(build_manifest(blob, "adapter", "x", "1", chunk_bytes=1024)), load_public_key(pub))
    r = edgefleet("fleet", "init-site", "--dir", str(tmp_path))
    assert r.returncode == 2 and "--force" in r.stderr
    assert edgefleet("fleet", "init-site", "--dir", str(tmp_path), "--force").returncode == 0


def test_ask_from_a_collection_names_its_citations_and_says_when_the_sources_do_not_answer(
    node: NodeProcess, tmp_path: Path
) -> None:
    doc = tmp_path / "alarms.md"
    doc.write_text(
        "# TC-5 alarm codes\n\n## A03 No glycol flow\n\nThe flow switch opened while the pump was commanded on.\n\n"
        "## A08 High discharge pressure\n\nThe discharge pressure passed 25 bar.\n"
    )
    r = edgefleet("--node", node.address, "knowledge", "ingest", str(doc), "--collection", "cli-ask")
    assert r.returncode == 0, r.stderr
    ask = ("--collection", "cli-ask", "--max-tokens", "24", "--temperature", "0")
    r = edgefleet("--node", node.address, "ask", "What does alarm A03 mean?", *ask)
    assert r.returncode == 0, r.stderr
    cited = [line for line in r.stderr.splitlines() if line.startswith("cited [")]
    assert cited and "alarms.md#" in cited[0], r.stderr
    assert "abstained:" not in r.stderr
    r = edgefleet("--node", node.address, "ask", "What does alarm A12 mean?", *ask)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "The documents do not cover this.", r.stdout
    assert "abstained: the sources do not answer this question" in r.stderr and "cited [" not in r.stderr
