"""The operator's first hour with the CLI: a real Mosquitto, a real orchestrator, one real node.

Reaching the site from a second shell (flags, config file, errors that name what was looked for
and what was seen), pushes that say which nodes applied them, and the node verbs: asking with a
template or through a group, knowledge ingest / retrieve / collections, a long prompt's progress.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import site_identity
from tests.conftest import ROOT, NodeProcess, free_port, wait_for
from tests.fleet.site_support import cli, operator_env
from tests.mqtt_support import Mosquitto, Orchestrator, Watcher, node_env

TEMPLATE = "Sensor {{ sensor }} reports {{ reading }}. Is this a fault? Answer yes or no."


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, Orchestrator, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("cli-site")
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    node = NodeProcess(tmp, node_id="cli-a", env=node_env(broker, EDGEFLEET_GROUPS="line"))
    try:
        node.wait_serving()
        env = operator_env(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab")
        assert wait_for(lambda: '"cli-a"' in cli("fleet", "status", "--json", env=env).stdout, timeout=30)
        yield broker, orch, node
    finally:
        node.stop()
        orch.stop()
        broker.stop()


def lab(broker: Mosquitto) -> dict[str, str]:
    return operator_env(EDGEFLEET_MQTT_URL=broker.url, EDGEFLEET_SITE="lab")


def test_a_second_shell_finds_the_site_by_flags_or_config_file_and_errors_say_what_was_seen(
    site: tuple[Mosquitto, Orchestrator, NodeProcess], tmp_path: Path
) -> None:
    broker, _, _ = site
    t0 = time.monotonic()
    r = cli("fleet", "status", env=operator_env(EDGEFLEET_MQTT_URL=f"mqtts://127.0.0.1:{free_port()}"))
    assert r.returncode == 2 and "cannot reach the broker at mqtts://127.0.0.1:" in r.stderr, r.stderr
    assert "--mqtt-url" in r.stderr and "cli.toml" in r.stderr
    assert time.monotonic() - t0 < 6, "a broker that is not there is known in a moment"
    plain = cli("fleet", "status", env=operator_env(EDGEFLEET_MQTT_URL=broker.url.replace("mqtts:", "mqtt:")))
    assert plain.returncode == 2 and "is plaintext; use mqtts://" in plain.stderr
    assert "EDGEFLEET_INSECURE" in plain.stderr
    t0 = time.monotonic()
    r = cli("--mqtt-url", broker.url, "fleet", "status")  # the site left at `default`
    assert r.returncode == 2 and "site 'default'" in r.stderr and "lab (online)" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 8, "a missing orchestrator is known in seconds, not 30"
    r = cli("--mqtt-url", broker.url, "--site", "lab", "fleet", "status")
    assert r.returncode == 0 and "cli-a" in r.stdout, r.stderr
    config = tmp_path / "cli.toml"
    config.write_text(f'mqtt_url = "{broker.url}"\nsite = "lab"\n')
    r = cli("fleet", "status", env=operator_env(config))
    assert r.returncode == 0 and "cli-a" in r.stdout, r.stderr
    r = cli("fleet", "status", env=operator_env(config, EDGEFLEET_SITE="elsewhere"))  # the environment wins
    assert r.returncode == 2 and "site 'elsewhere'" in r.stderr, r.stderr
    config.write_text('mqtt_url = "mqtt://x:1"\nsight = "lab"\n')
    r = cli("fleet", "status", env=operator_env(config))
    assert r.returncode == 2 and "unknown key(s) sight" in r.stderr, r.stderr
    h = cli("--help")
    for words in ("EDGEFLEET_MQTT_URL", "EDGEFLEET_SITE", "EDGEFLEET_NODE", "EDGEFLEET_CLI_CONFIG", "cli.toml"):
        assert words in h.stdout


def test_push_template_says_which_nodes_applied_it_and_refuses_surprises(
    site: tuple[Mosquitto, Orchestrator, NodeProcess], tmp_path: Path
) -> None:
    broker, _, _ = site
    f = tmp_path / "fault.j2"
    f.write_text(TEMPLATE)
    push = ("fleet", "push-template", str(f), "--name", "fault")
    r = cli(*push, "--version", "2", "--target", "line", env=lab(broker))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "published for group:line as generation" in r.stdout and "pushed" not in r.stdout
    assert "cli-a" in r.stdout and "applied generation" in r.stdout, r.stdout
    r = cli(*push, "--version", "1", "--target", "line", env=lab(broker))
    assert r.returncode == 2 and "refused (older_version)" in r.stderr and "--force" in r.stderr, r.stderr
    r = cli(*push, "--version", "1", "--target", "line", "--force", env=lab(broker))
    assert r.returncode == 0 and "applied generation" in r.stdout, r.stdout + r.stderr
    r = cli(*push, "--version", "1", "--target", "nosuchgroup", env=lab(broker))
    assert r.returncode == 2 and "refused (not_found)" in r.stderr and "--new-group" in r.stderr, r.stderr
    r = cli(*push, "--version", "1", "--target", "nosuchgroup", "--new-group", env=lab(broker))
    assert r.returncode == 0 and "no node of group:nosuchgroup has registered yet" in r.stdout, r.stdout


def test_after_retained_state_is_lost_and_the_registry_rebuilt_generations_continue_after_what_nodes_report(
    site: tuple[Mosquitto, Orchestrator, NodeProcess], tmp_path: Path
) -> None:
    broker, orch, _ = site
    topic = "edgefleet/lab/desired/node/cli-a"
    stray = {
        "v": 1,
        "site": "lab",
        "target": {"kind": "node", "name": "cli-a"},
        "generation": 1002,
        "templates": {},
    }
    w = Watcher(broker, "edgefleet/lab/node/cli-a/reported")
    try:
        w.publish(topic, site_identity.site().signed(stray), retain=True)
        assert wait_for(lambda: any(m.get("generations", {}).get("node:cli-a") == 1002 for m in w.json()), 10)
        orch.stop()
        w.publish(topic, b"garbage", retain=True)  # the retained document is lost
        for suffix in ("", "-wal", "-shm"):
            Path(f"{orch.db}{suffix}").unlink(missing_ok=True)
        orch.start()
    finally:
        w.close()
    # The rebuilt registry learns of cli-a (and the generation it reports) from its retained status and
    # report; a push before that would start again at generation 1 (seen on a busy machine).
    listed = wait_for(lambda: '"cli-a"' in cli("fleet", "status", "--json", env=lab(broker)).stdout, timeout=60)
    assert listed, "the restarted orchestrator never listed cli-a again"
    f = tmp_path / "own.j2"
    f.write_text(TEMPLATE)
    r = cli("--timeout", "30", "fleet", "push-template", str(f), "--name", "own", "--version", "1",
            "--target", "node:cli-a", env=lab(broker))  # fmt: skip
    for _ in range(20):  # the restarted orchestrator may still be connecting
        if r.returncode == 0 or ("never announced" not in r.stderr and "is offline" not in r.stderr):
            break
        time.sleep(0.5)
        r = cli("fleet", "push-template", str(f), "--name", "own", "--version", "1", "--target", "node:cli-a",
                env=lab(broker))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "as generation 1003" in r.stdout and "applied generation 1003" in r.stdout, r.stdout


def test_ask_with_a_template_through_a_group_streams_only_the_answer_to_stdout(
    site: tuple[Mosquitto, Orchestrator, NodeProcess], tmp_path: Path
) -> None:
    broker, _, node = site
    f = tmp_path / "triage.j2"
    f.write_text(TEMPLATE)
    assert cli("fleet", "push-template", str(f), "--name", "triage", "--version", "1", "--target", "line",
               env=lab(broker)).returncode == 0  # fmt: skip
    r = cli("--group", "line", "ask", "--template", "triage", "--var", "sensor=pump-3", "--var", "reading=7.1 mm/s",
            "--max-tokens", "6", "--temperature", "0", env=lab(broker))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "[length]" not in r.stdout and "prompt" not in r.stdout, r.stdout
    assert f"node cli-a ({node.address}) of group line" in r.stderr
    assert "] prompt " in r.stderr and "tokens/s" in r.stderr
    r = cli("--node", node.address, "ask", "--template", "triage", "--var", "sensor=p", "--max-tokens", "2")
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "reading" in r.stderr, r.stderr
    r = cli("--group", "nosuch", "ask", "hi", env=lab(broker))
    assert r.returncode == 2 and "no online node of group 'nosuch'" in r.stderr and "line" in r.stderr, r.stderr


def test_knowledge_verbs_and_a_long_prompt_shows_its_reading_on_stderr(
    site: tuple[Mosquitto, Orchestrator, NodeProcess],
) -> None:
    _, _, node = site
    corpus = ROOT / "bench" / "rag_corpus"
    r = cli("--node", node.address, "knowledge", "ingest", str(corpus), "--collection", "manual", "--version", "1")
    assert r.returncode == 0 and "into manual" in r.stdout, r.stdout + r.stderr
    r = cli("--node", node.address, "knowledge", "collections")
    assert r.returncode == 0 and "manual" in r.stdout and "1" in r.stdout, r.stdout + r.stderr
    r = cli("--node", node.address, "knowledge", "retrieve", "alarm A03 on the TC-5", "--collection", "manual")
    assert r.returncode == 0 and "manual/" in r.stdout, r.stdout + r.stderr
    question = "What does alarm A03 on the TC-5 mean? " + "Please answer briefly. " * 250
    r = cli("--node", node.address, "ask", question, "--max-tokens", "4", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "reading the prompt: " in r.stderr and "first token after" in r.stderr, r.stderr
    tokens = int(r.stderr.split("reading the prompt: ", 1)[1].split(" ", 1)[0])
    assert tokens > 500
    assert "reading" not in r.stdout and "[length]" not in r.stdout
    r = cli("--node", node.address, "ask", "What does alarm A03 mean?", "--collection", "manual", "--max-tokens", "4")
    assert r.returncode == 0 and "sources: manual/" in r.stderr, r.stderr
