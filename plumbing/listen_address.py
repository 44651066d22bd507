"""Where a listener binds by default: everywhere in secure mode, the loopback interface in insecure mode.

An insecure process (EDGEFLEET_INSECURE) serves plaintext and asks no one for a certificate, so
by default it listens on 127.0.0.1 only: the same machine's clients reach it, the network does
not. An address the operator sets explicitly is kept; when it is not a loopback one, every start
logs a WARNING naming it (`warn_exposed`). Each part's settings apply this in a validator to the
listen fields it has (node gRPC and metrics, the orchestrator's front door, the console).
"""

from __future__ import annotations

import ipaddress
import logging

ANY_HOST = "0.0.0.0"
LOOPBACK_HOST = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; anything else (a name, 0.0.0.0, ::) may face the network."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_address(address: str) -> str:
    """host:port with the host `0.0.0.0` replaced by 127.0.0.1 (an empty address stays off)."""
    host, sep, port = address.rpartition(":")
    return f"{LOOPBACK_HOST}:{port}" if sep and host == ANY_HOST else address


def warn_exposed(log: logging.Logger, part: str, exposed: dict[str, str]) -> None:
    """One WARNING per insecure listener set (explicitly) on an address that is not loopback."""
    for setting, address in exposed.items():
        log.warning(
            "INSECURE listener exposed on %s: %s serves it without TLS or authentication to anyone who can "
            "reach that address (%s set explicitly; unset, an insecure listener binds 127.0.0.1)",
            address,
            part,
            setting,
            extra={"insecure": True, "address": address, "setting": setting},
        )
