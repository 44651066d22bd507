"""Console load: fleet page load time and live-update latency with N simulated nodes (default 50).

A real Mosquitto, orchestrator and console; 50 simulated nodes publish real MQTT status (retained,
with node info) and telemetry every second (simulated: no model, the figure is the console's).
Headless Chromium (selenium) measures:
- page load: navigation start → the fleet table shows its first page (up to 50 rows; median of runs);
- live-update latency: a telemetry published with a marker queue depth → the browser's DOM shows
  it (both clocks are this machine's), median and p90 over samples.

    .venv/bin/python bench/console_load.py [--nodes 50] [--samples 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgefleet.fleet.console.fleet_table import DEFAULT_LIMIT
from edgefleet.proto.payloads import ModelRef, NodeInfoPayload, NodeStatus, Telemetry
from edgefleet.proto.topics import Topics
from tests import site_identity
from tests.fleet.console.conftest import PASSWORD, ConsoleProcess
from tests.mqtt_support import Mosquitto, Orchestrator

TOPICS = Topics.for_site("lab")


def telemetry(node: str, queue: int = 0) -> bytes:
    return Telemetry(
        node_id=node,
        queue_depth=queue,
        slots_busy=1,
        slots_total=4,
        slots_available=3,
        tokens_per_second=12.5,
        temperature_c=48.0,
        throttled=False,
        shedding=False,
        rss_bytes=300 * 2**20,
    ).dumps()


class SimulatedNodes:
    def __init__(self, broker: Mosquitto, count: int) -> None:
        self.ids = [f"sim-{i:03d}" for i in range(count)]
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        files = site_identity.site().harness_files  # the test broker is mutual TLS, as a site's is
        self.client.tls_set(ca_certs=str(files.ca), certfile=str(files.cert), keyfile=str(files.key))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.marker: dict[str, int] = {}
        for i, n in enumerate(self.ids):
            info = NodeInfoPayload(
                profile="sim",
                groups=[f"line-{i % 5}"],
                model=ModelRef(name="sim-model"),
                grpc_address=f"127.0.0.1:{20000 + i}",
            )
            self.client.publish(
                TOPICS.node_status(n), NodeStatus(node_id=n, state="online", info=info).dumps(), qos=1, retain=True
            ).wait_for_publish(5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            for n in self.ids:
                self.client.publish(TOPICS.node_telemetry(n), telemetry(n, self.marker.get(n, 0)), qos=0)
            self._stop.wait(1.0)

    def mark(self, node: str, queue: int) -> float:
        self.marker[node] = queue
        sent = time.time()
        self.client.publish(TOPICS.node_telemetry(node), telemetry(node, queue), qos=0)
        return sent

    def stop(self) -> None:
        self._stop.set()
        for n in self.ids:  # clear the retained status so nothing outlives the run
            self.client.publish(TOPICS.node_status(n), b"", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = Mosquitto(tmp)
    orch = Orchestrator(tmp, broker)
    sims = SimulatedNodes(broker, args.nodes)
    console = ConsoleProcess(tmp, broker)
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1024,1366"):
        opts.add_argument(a)
    opts.accept_insecure_certs = True  # the console's certificate is from the bench site's CA, unknown to Chromium
    driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(console.url + "/login")
        driver.find_element(By.ID, "name").send_keys("olivia")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-submit").click()
        count_js = "return document.querySelectorAll('#fleet-table tbody tr').length"
        shown = min(args.nodes, DEFAULT_LIMIT)  # the page shows one page of rows (sorted by node id)
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(count_js) >= shown)
        loads = []
        for _ in range(5):
            driver.get(console.url + "/")
            WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.execute_script(count_js) >= shown)
            loads.append(driver.execute_script("return performance.now()"))
        latencies = []
        driver.execute_script(
            "window.__seen = {}; new MutationObserver(() => { for (const r of document.querySelectorAll("
            "'#fleet-table tbody tr')) { const q = r.querySelector('td.queue').textContent; "
            "if (q >= 1000 && !(q in window.__seen)) window.__seen[q] = Date.now(); } })"
            ".observe(document.querySelector('#fleet-table tbody'), {childList: true, subtree: true});"
        )
        for i in range(args.samples):
            node = sims.ids[i % shown]  # a node on the page
            marker = 1000 + i
            sent = sims.mark(node, marker)
            seen = WebDriverWait(driver, 10, poll_frequency=0.02).until(
                lambda d, m=marker: d.execute_script(f"return window.__seen['{m}']")
            )
            latencies.append(seen - sent * 1000)
            time.sleep(0.3)
        latencies.sort()
        print(
            f"nodes {args.nodes}: fleet page load (navigation → its {shown} rows shown) median "
            f"{statistics.median(loads):.0f} ms (runs: {', '.join(f'{x:.0f}' for x in loads)})"
        )
        print(
            f"live update (telemetry published → row shows it) over {len(latencies)} samples: median "
            f"{statistics.median(latencies):.0f} ms, p90 {latencies[int(0.9 * (len(latencies) - 1))]:.0f} ms, "
            f"max {latencies[-1]:.0f} ms"
        )
    finally:
        driver.quit()
        sims.stop()
        console.stop()
        orch.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
