"""Which local addresses a TCP port is listened on, read from the kernel (no `ss`, no psutil)."""

from __future__ import annotations

import ipaddress
from pathlib import Path


def listening(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port or len(addr_hex) != width:
                continue
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, width, 8))
            ip = ipaddress.ip_address(raw)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            found.add(str(mapped or ip))  # ::ffff:127.0.0.1 (gRPC binds IPv4 that way) is 127.0.0.1
    return found
