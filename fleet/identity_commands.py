"""`edgefleet fleet init-pki | enroll-node | enroll-sensor | enroll-operator | revoke | identities |
broker-config`: the site's X.509 identities and the broker configuration computed from them.

These verbs work on the PKI directory only (no broker, no orchestrator): run them on the
operator's workstation or the orchestrator host. Output names files and serials, never key bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from edgefleet.fleet.site.broker_config import BrokerPolicy, ListenerOptions, reload_broker, write_broker_files
from edgefleet.fleet.site.pki import KINDS, ORCHESTRATOR, ORCHESTRATOR_SITE_KEY, PkiError, SitePki
from edgefleet.fleet.site.pki_files import refresh, write_private, write_public
from edgefleet.plumbing.site_settings import SiteSettings
from edgefleet.proto.access import DEFAULT_OPERATOR_ROLE, Role
from edgefleet.proto.actuators import DEFAULT_ACTUATOR_TOPICS
from edgefleet.proto.artifacts import SiteKey
from edgefleet.proto.paging import page_of
from edgefleet.proto.payloads import describe_validation_error
from edgefleet.proto.topics import Topics

VERBS = ("init-pki", "enroll-node", "enroll-sensor", "enroll-operator", "revoke", "identities", "broker-config")
PKI_DIR_ENV = "EDGEFLEET_PKI_DIR"


class IdentityCommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def default_pki_dir() -> Path:
    explicit = os.environ.get(PKI_DIR_ENV)
    return Path(explicit).expanduser() if explicit else Path.home() / ".config" / "edgefleet" / "pki"


def _dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, default=None, help=f"the site PKI directory (${PKI_DIR_ENV}; ~/.config/edgefleet/pki)"
    )


def _reload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-pid", type=int, help="send SIGHUP to this Mosquitto process to reload ACL and CRL")
    p.add_argument("--broker-pid-file", type=Path, help="read the Mosquitto pid to SIGHUP from this file")


def add_parsers(fsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = fsub.add_parser("init-pki", help="create the site CA, the broker certificate and the orchestrator identity")
    _dir_flag(init)
    init.add_argument("--broker-host", action="append", default=[], help="extra DNS name/IP of the broker (repeat)")
    init.add_argument("--broker-url", help="what devices connect to (default mqtts://<first host>:<port>)")
    init.add_argument("--port", type=int, default=8883, help="TLS listener port (default 8883)")
    init.add_argument("--force", action="store_true", help="replace an existing PKI (every identity re-enrolls)")
    init.add_argument(
        "--site-key",
        type=Path,
        help="the site's Ed25519 signing key (from `fleet init-site`; default: <dir>/<site>.key, created if missing)",
    )
    for kind in ("node", "sensor", "operator"):
        e = fsub.add_parser(f"enroll-{kind}", help=f"issue a {kind}'s key and certificate into a bundle directory")
        e.add_argument("name", help="node id" if kind == "node" else f"{kind} name (the certificate CN)")
        _dir_flag(e)
        if kind == "node":
            e.add_argument("--groups", default="", help="comma-separated groups the node belongs to")
        if kind == "operator":
            e.add_argument(
                "--role",
                choices=[r.value for r in Role],
                default=DEFAULT_OPERATOR_ROLE.value,
                help="viewer: reads and asks; operator: also changes the fleet; admin: also API keys "
                "(default: operator)",
            )
        e.add_argument("--install-dir", help="where the bundle will live on the device (paths in edgefleet.env)")
        e.add_argument(
            "--host",
            action="append",
            default=None,
            help="a DNS name/IP clients reach it by, added to its certificate (repeat; a node is always "
            "reachable by its id)",
        )
        e.add_argument("--force", action="store_true", help="re-issue a live identity (the old certificate is revoked)")
        _reload_flags(e)
    rv = fsub.add_parser("revoke", help="revoke an identity: new CRL and ACL, then reload the broker")
    rv.add_argument("name")
    _dir_flag(rv)
    _reload_flags(rv)
    ls = fsub.add_parser("identities", help="list the site's identities, kinds, groups, serials and revocations")
    _dir_flag(ls)
    ls.add_argument("--json", action="store_true", help="one JSON list (with --limit: the page, its total)")
    ls.add_argument("--kind", choices=KINDS, help="only identities of this kind")
    ls.add_argument("--group", default="", help="only identities in this group (or assigned to it)")
    ls.add_argument("--state", choices=["active", "revoked"], help="only active or only revoked identities")
    ls.add_argument("--search", default="", help="only names containing this (any case)")
    ls.add_argument("--limit", type=int, help="one page of at most N identities (with the next page's offset)")
    ls.add_argument("--offset", type=int, default=0, help="start at this identity (the last page's next offset)")
    bc = fsub.add_parser("broker-config", help="write mosquitto.conf and the ACL from the topic contract")
    _dir_flag(bc)
    bc.add_argument("--port", type=int, help="TLS listener port")
    bc.add_argument("--bind", help="listen address (default: all)")
    bc.add_argument("--sensor-filter", action="append", help="where sensors publish, e.g. 'plant/#' (repeat)")
    bc.add_argument("--node-output", action="append", help="extra topic filter nodes may publish to (repeat)")
    bc.add_argument(
        "--actuator-topic",
        action="append",
        help="where actuators listen: agents' act tools publish there (repeat; default actions/#)",
    )
    bc.add_argument("--persistence-dir", help="Mosquitto persistence_location")
    bc.add_argument("--run-as-user", help="Mosquitto `user` option")
    bc.add_argument(
        "--nodes",
        type=_node_count,
        help="nodes the site expects; queue, in-flight and connection limits follow it (default: those enrolled)",
    )
    bc.add_argument("--out", type=Path, help="where to write mosquitto.conf and acl (default <dir>/broker)")
    _reload_flags(bc)


def _node_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"--nodes must be a whole number from 0 to 1000000, not {text!r}")
    return n


def _listener(settings: dict[str, Any]) -> ListenerOptions:
    return ListenerOptions(
        port=int(settings.get("port", 8883)),
        bind=str(settings.get("bind") or ""),
        persistence_dir=settings.get("persistence_dir"),
        run_as_user=settings.get("run_as_user"),
        nodes=int(settings.get("nodes") or 0),
    )


def regenerate(pki: SitePki, topic_root: str, out: TextIO) -> tuple[Path, Path]:
    """Rewrite CRL, ACL and mosquitto.conf from the registry and the kept broker choices, and
    bring public/ (what services mount) up to date."""
    s = pki.broker_settings()
    policy = BrokerPolicy(
        Topics.for_site(pki.site, topic_root),
        sensor_filters=tuple(s.get("sensor_filters") or ("sensors/#",)),  # type: ignore[arg-type]
        node_outputs=tuple(s.get("node_outputs") or ()),  # type: ignore[arg-type]
        actuator_topics=tuple(s.get("actuator_topics") or DEFAULT_ACTUATOR_TOPICS),  # type: ignore[arg-type]
    )
    out_dir = Path(str(s["out"])) if s.get("out") else None
    conf, acl = write_broker_files(pki, policy, _listener(s), out_dir)
    pki.publish()
    out.write(f"wrote {conf} and {acl}\n")
    return conf, acl


def _reload(args: argparse.Namespace, out: TextIO) -> None:
    try:
        pid = reload_broker(args.broker_pid, args.broker_pid_file)
    except (OSError, ValueError) as e:
        raise IdentityCommandError(f"could not signal the broker: {e}") from e
    if pid is None:
        out.write("reload the broker to apply it (Mosquitto: kill -HUP <pid>, or systemctl reload mosquitto)\n")
    else:
        out.write(f"asked the broker (pid {pid}) to reload its ACL and CRL\n")


def write_env(pki: SitePki, name: str, kind: str, groups: list[str], install_dir: str | None) -> Path:
    """The bundle's edgefleet.env: what a device exports (EDGEFLEET_MQTT_* and, for a node, its id)."""
    bundle = pki.bundle_dir(name)
    base = Path(install_dir) if install_dir else bundle.resolve()
    s = pki.broker_settings()
    lines = [
        f"EDGEFLEET_SITE={pki.site}",
        f"EDGEFLEET_MQTT_URL={s.get('url') or 'mqtts://localhost:8883'}",
        f"EDGEFLEET_MQTT_CA_FILE={base / 'ca.crt'}",
        f"EDGEFLEET_MQTT_CERT_FILE={base / 'client.crt'}",
        f"EDGEFLEET_MQTT_KEY_FILE={base / 'client.key'}",
    ]
    site_key = pki.site_key_path
    if kind == "node":
        lines.append(f"EDGEFLEET_NODE_ID={name}")
        if groups:
            lines.append(f"EDGEFLEET_GROUPS={','.join(groups)}")
        public = site_key.with_suffix(".pub")
        if public.exists():  # the node verifies desired state with it
            write_public(bundle / "site.pub", public.read_bytes())
            lines.append(f"EDGEFLEET_SITE_PUBLIC_KEY={base / 'site.pub'}")
    if kind == "orchestrator":  # signs with (its copy of) the site key; trusts operators and the CRL of public/
        refresh(bundle / ORCHESTRATOR_SITE_KEY, site_key, private=True)
        lines += [
            f"EDGEFLEET_SITE_KEY={base / ORCHESTRATOR_SITE_KEY}",
            f"EDGEFLEET_OPERATOR_KEYS={pki.public_dir.resolve()}",
            f"EDGEFLEET_TLS_CRL_FILE={pki.crl_path.resolve()}",
        ]
    path = bundle / "edgefleet.env"
    write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def read_env(path: Path) -> dict[str, str]:
    """The variables of an edgefleet.env file (KEY=VALUE lines)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _init(pki: SitePki, args: argparse.Namespace, site: str, topic_root: str, out: TextIO) -> int:
    hosts = list(args.broker_host)
    pki.init(site, hosts, force=args.force)
    url = args.broker_url or f"mqtts://{hosts[0] if hosts else 'localhost'}:{args.port}"
    site_key = (args.site_key or pki.dir / f"{site}.key").resolve()
    if not site_key.exists():
        if args.site_key:
            raise IdentityCommandError(f"no site key at {site_key}: run `edgefleet fleet init-site` first")
        SiteKey.generate().save(site_key, site_key.with_suffix(".pub"))
        out.write(f"site signing key: {site_key} (signs desired state and artifacts; nodes pin its .pub)\n")
    pki.set_broker_settings({**pki.broker_settings(), "url": url, "port": args.port, "site_key": str(site_key)})
    write_env(pki, ORCHESTRATOR, "orchestrator", [], None)
    regenerate(pki, topic_root, out)
    out.write(f"site CA: {pki.ca_cert_path} (its key {pki.ca_key_path} stays on this machine)\n")
    out.write(f"broker certificate: {pki.server_cert_path} for localhost, 127.0.0.1 {' '.join(hosts)}\n")
    out.write(f"orchestrator identity: {pki.bundle_dir(ORCHESTRATOR)} (with a copy of the site key)\n")
    out.write(
        f"what services mount: the broker {pki.broker_dir} and {pki.public_dir}; the orchestrator its bundle "
        f"and {pki.public_dir}; every other device its bundle only\n"
    )
    return 0


def _list(pki: SitePki, args: argparse.Namespace, out: TextIO) -> int:
    """The identities the filters match, by kind and name; `--limit`/`--offset`: one page of them."""
    if args.offset < 0 or (args.limit is not None and args.limit < 0):
        raise IdentityCommandError("--offset and --limit must not be negative")
    wanted = [
        i
        for i in sorted(pki.identities(), key=lambda i: (i.kind, i.name))
        if (not args.kind or i.kind == args.kind)
        and (not args.group or args.group in [*i.groups, *i.assigned_groups])
        and (not args.state or i.revoked == (args.state == "revoked"))
        and args.search.lower() in i.name.lower()
    ]
    page = page_of(wanted, args.offset, args.limit, budget=sys.maxsize, size=lambda _: 0)  # local: no size limit
    if args.json:
        docs = [vars(i) for i in page.items]
        doc = docs if args.limit is None else {"identities": docs, "total": page.total, "next_offset": page.next_offset}
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    for i in page.items:
        state = f"revoked {i.revoked_at}" if i.revoked else "active"
        scope = f"role {i.role}" if i.role else ",".join(i.groups) or "-"  # an operator's role, a node's groups
        out.write(f"{i.name:<24} {i.kind:<12} {scope:<20} {i.serial:x}  {state}\n")
    if page.next_offset is not None:
        out.write(f"{page.total} identities; next page: --offset {page.next_offset}\n")
    return 0


def run(args: argparse.Namespace, site: str, topic_root: str, out: TextIO) -> int:
    """Run one of VERBS; `site` and `topic_root` come from the CLI settings (EDGEFLEET_SITE, …)."""
    pki = SitePki((args.dir or default_pki_dir()).absolute())  # absolute paths in mosquitto.conf and the env files
    verb = args.fleet_command
    try:
        if verb == "init-pki":
            return _init(pki, args, site, topic_root, out)
        if verb == "identities":
            return _list(pki, args, out)
        if verb.startswith("enroll-"):
            kind = verb.removeprefix("enroll-")
            groups = [g.strip() for g in getattr(args, "groups", "").split(",") if g.strip()]
            role = getattr(args, "role", None) if kind == "operator" else None
            ident = pki.issue(args.name, kind, groups, force=args.force, hosts=args.host, role=role)
            env = write_env(pki, ident.name, kind, ident.groups, args.install_dir)
            as_role = f" with role {ident.role}" if ident.role else ""
            out.write(
                f"enrolled {kind} {ident.name}{as_role} (serial {ident.serial:x}): copy {env.parent} onto the device\n"
            )
            out.write(f"  (client.key is private: keep it 0600; load {env.name} as the service's environment)\n")
        elif verb == "revoke":
            ident = pki.revoke(args.name)
            out.write(f"revoked {ident.kind} {ident.name} (serial {ident.serial:x})\n")
        elif verb == "broker-config":
            s = pki.broker_settings()
            for key, value in (
                ("port", args.port),
                ("bind", args.bind),
                ("sensor_filters", args.sensor_filter),
                ("node_outputs", args.node_output),
                ("actuator_topics", args.actuator_topic),
                ("persistence_dir", args.persistence_dir),
                ("run_as_user", args.run_as_user),
                ("nodes", args.nodes),
                ("out", str(args.out.resolve()) if args.out else None),
            ):
                if value is not None:
                    s[key] = value
            pki.set_broker_settings(s)
        else:
            raise IdentityCommandError(f"unknown verb {verb}")
        regenerate(pki, topic_root, out)
        _reload(args, out)
        return 0
    except (PkiError, ValueError) as e:
        raise IdentityCommandError(str(e)) from e


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Standalone entry (`python -m edgefleet.fleet.identity_commands VERB …`), same verbs as `edgefleet fleet`."""
    parser = argparse.ArgumentParser(prog="edgefleet-pki")
    parser.add_argument("--site", help="the site (EDGEFLEET_SITE; default 'default')")
    parser.add_argument(
        "--topic-root", help="root of every MQTT topic (EDGEFLEET_TOPIC_ROOT; default edgefleet/{site}/)"
    )
    add_parsers(parser.add_subparsers(dest="fleet_command", required=True))
    args = parser.parse_args(argv)
    flags = {"site": args.site, "topic_root": args.topic_root}
    try:
        site = SiteSettings(**{k: v for k, v in flags.items() if v is not None})  # flags over EDGEFLEET_*
    except ValidationError as e:
        err.write(f"edgefleet: invalid setting: {describe_validation_error(e)}\n")
        return 2
    try:
        return run(args, site.site, site.topic_root, out)
    except IdentityCommandError as e:
        err.write(f"edgefleet: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
