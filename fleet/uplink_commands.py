"""`edgefleet fleet uplink-config | sites-status`: more than one site, through a central broker.

`uplink-config` writes the Mosquitto bridge block of this site's broker (fleet/site/bridge_config.py):
the fleet's status, telemetry and reported state go UP to the central broker with unchanged topic
names (they carry the site), the central desired state of this site comes DOWN.

`sites-status` reads the central broker for a short while (at most 2 s): the retained status of
every node of every site, and the telemetry that arrives meanwhile; one row per site and node.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.fleet.settings import FleetSettings
from edgefleet.fleet.site.bridge_config import CentralBroker, bridge_conf, write_bridge_conf
from edgefleet.plumbing.mqtt_link import BrokerAddress
from edgefleet.proto.topics import Topics

VERBS = ("uplink-config", "sites-status")
MAX_WAIT_S = 2.0


class UplinkCommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def tls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--central-ca-file", help="CA file of the central broker (TLS)")
    p.add_argument("--central-cert-file", help="client certificate for the central broker")
    p.add_argument("--central-key-file", help="private key of that certificate")


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = fsub.add_parser("uplink-config", help="write this site broker's bridge to the central broker")
    up.add_argument("--central", required=True, help="central broker HOST:PORT")
    up.add_argument("--out", type=Path, help="write the block to this file (default: print it)")
    tls_flags(up)
    ss = fsub.add_parser("sites-status", help="every site's nodes, as the central broker sees them")
    ss.add_argument("--central-url", required=True, help="central broker, mqtt://HOST:PORT or mqtts://HOST:PORT")
    ss.add_argument("--wait", type=float, default=1.5, help=f"seconds to listen (at most {MAX_WAIT_S:g})")
    ss.add_argument("--json", action="store_true")
    ss.add_argument("--only-site", default="", metavar="SITE", help="only this site's nodes")
    ss.add_argument("--state", default="", help="only nodes in this state (online, offline, failed, unknown)")
    tls_flags(ss)


@dataclass
class SiteNode:
    site: str
    node_id: str
    state: str = "unknown"
    last_seen: float | None = None

    def seen(self, ts: Any) -> None:
        if isinstance(ts, (int, float)) and (self.last_seen is None or ts > self.last_seen):
            self.last_seen = float(ts)


def _site_level(root_template: str) -> int:
    levels = root_template.rstrip("/").split("/")
    if "{site}" not in levels:
        raise UplinkCommandError(f"topic root {root_template!r} must have {{site}} as a whole level")
    return levels.index("{site}")


def all_sites_topics(root_template: str) -> Topics:
    """The topics of every site: `{site}` replaced by the `+` wildcard (subscription filters only)."""
    _site_level(root_template)
    root = root_template.format(site="+")
    return Topics("+", root if root.endswith("/") else root + "/")


def collect(
    messages: list[tuple[str, bytes]], root_template: str = "edgefleet/{site}/"
) -> dict[tuple[str, str], SiteNode]:
    """Rows from (topic, payload) pairs of status and telemetry topics, keyed by (site, node)."""
    site_at = _site_level(root_template)
    n_root = len(root_template.rstrip("/").split("/"))
    rows: dict[tuple[str, str], SiteNode] = {}
    for topic, payload in messages:
        levels = topic.split("/")
        if len(levels) != n_root + 3 or levels[n_root] != "node" or levels[-1] not in ("status", "telemetry"):
            continue
        site, node = levels[site_at], levels[n_root + 1]
        if Topics.for_site(site, root_template).node_of(topic, levels[-1]) != node:
            continue  # the other levels of the root do not match
        try:
            doc = json.loads(payload) if payload else {}
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict):
            continue
        row = rows.setdefault((site, node), SiteNode(site, node))
        if levels[-1] == "status":
            row.state = str(doc.get("state", "unknown"))
        elif row.state == "unknown":
            row.state = "online"  # telemetry without a retained status seen yet
        row.seen(doc.get("ts"))
    return rows


def read_central(
    url: str, root_template: str, wait_s: float, tls: CentralBroker | None = None
) -> dict[tuple[str, str], SiteNode]:
    addr = BrokerAddress.parse(url)
    t = all_sites_topics(root_template)
    messages: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"edgefleet-sites-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    if addr.tls:
        client.tls_set(
            ca_certs=tls.ca_file if tls else None,
            certfile=tls.cert_file if tls else None,
            keyfile=tls.key_file if tls else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe([(t.all_node_status(), 1), (t.all_node_telemetry(), 0)])

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            messages.append((msg.topic, bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    try:
        client.connect(addr.host, addr.port, keepalive=10)
    except OSError as e:
        raise UplinkCommandError(f"cannot reach the central broker {url}: {e}") from e
    client.loop_start()
    try:
        deadline = time.monotonic() + min(max(wait_s, 0.1), MAX_WAIT_S)
        if not subscribed.wait(max(deadline - time.monotonic(), 0.0)):
            raise UplinkCommandError(f"the central broker {url} did not answer within {MAX_WAIT_S:g} s")
        time.sleep(max(deadline - time.monotonic(), 0.0))
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return collect(messages, root_template)


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(time.time() - ts, 0.0)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


def sites_summary(rows: list[SiteNode]) -> str:
    """`2 sites, 1200 nodes: 1150 online, 50 offline` (the line under the sites-status table)."""
    states = Counter(r.state for r in rows)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: (-kv[1], kv[0])))
    sites = len({r.site for r in rows})
    return f"{sites} site{'' if sites == 1 else 's'}, {len(rows)} node{'' if len(rows) == 1 else 's'}: {counts}"


def _central(address: str, args: argparse.Namespace) -> CentralBroker:
    try:
        return CentralBroker.parse(address, args.central_ca_file, args.central_cert_file, args.central_key_file)
    except ValueError as e:
        raise UplinkCommandError(str(e)) from e


def run(args: argparse.Namespace, settings: FleetSettings, out: TextIO) -> int:
    """Run one of VERBS; the site and topic root come from the CLI settings (EDGEFLEET_SITE, …)."""
    verb = args.fleet_command
    if verb == "uplink-config":
        central = _central(args.central, args)
        try:
            if args.out:
                path = write_bridge_conf(args.out, settings.site, central, settings.topic_root)
                out.write(f"wrote the bridge of site {settings.site} to {central.host}:{central.port} in {path}\n")
                out.write("  include it in the site broker's mosquitto.conf (include_dir or append), then restart it\n")
            else:
                out.write(bridge_conf(settings.site, central, settings.topic_root))
        except (ValueError, OSError) as e:
            raise UplinkCommandError(str(e)) from e
        return 0
    if verb == "sites-status":
        tls = None
        if args.central_ca_file or args.central_cert_file:
            tls = CentralBroker("", 0, args.central_ca_file, args.central_cert_file, args.central_key_file)
        try:
            rows = read_central(args.central_url, settings.topic_root, args.wait, tls)
        except ValueError as e:
            raise UplinkCommandError(str(e)) from e
        ordered = [
            rows[k]
            for k in sorted(rows)
            if (not args.only_site or rows[k].site == args.only_site)
            and (not args.state or rows[k].state == args.state)
        ]
        if args.json:
            docs = [{"site": r.site, "node_id": r.node_id, "state": r.state, "last_seen": r.last_seen} for r in ordered]
            out.write(json.dumps(docs, indent=2) + "\n")
            return 0
        if not ordered:
            out.write(f"no node status on {args.central_url} (is any site's bridge connected?)\n")
            return 0
        table = [("SITE", "NODE", "STATE", "LAST SEEN")] + [
            (r.site, r.node_id, r.state, _age(r.last_seen)) for r in ordered
        ]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(sites_summary(ordered) + "\n")
        return 0
    raise UplinkCommandError(f"unknown verb {verb}")
