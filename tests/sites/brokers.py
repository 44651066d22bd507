"""Two real Mosquitto brokers: a site's, bridged to a central one (fleet/site/bridge_config.py)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.fleet.site.bridge_config import CentralBroker, write_bridge_conf
from tests import site_identity
from tests.mqtt_support import Mosquitto


class BridgedMosquitto(Mosquitto):
    """tests.mqtt_support.Mosquitto plus an `include_dir` holding this site's generated bridge block."""

    def __init__(self, tmp: Path, site: str, central: Mosquitto) -> None:
        self.bridge_dir = tmp / "bridge.d"
        h = site_identity.site().harness_dir  # the bridge shows a site certificate to the central broker
        central_tls = CentralBroker.parse(
            f"127.0.0.1:{central.port}", str(h / "ca.crt"), str(h / "client.crt"), str(h / "client.key")
        )
        self.bridge_file = write_bridge_conf(self.bridge_dir / "uplink.conf", site, central_tls)
        super().__init__(tmp)

    def start(self) -> None:
        line = f"include_dir {self.bridge_dir}\n"
        text = self.conf.read_text()
        if line not in text:
            self.conf.write_text(text + line)
        super().start()

    def log(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")
