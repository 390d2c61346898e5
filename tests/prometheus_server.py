"""A real Prometheus server for the tests (Debian's package `prometheus`), scraping emulators.

`ensure_prometheus()` finds the binary, installing the package with apt-get when it is missing
and the tests run as root (as `make prometheus` does); otherwise it fails saying what to install.
`PrometheusServer` runs it on a free loopback port with a configuration of its own (a scrape
every second), in a temporary directory; `query()` asks its HTTP API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from processes import ServerProcess, free_port, http_ok

PROMETHEUS_MISSING = ("prometheus is not installed and could not be installed: run "
                      "`apt-get install --no-install-recommends prometheus` (Debian/Ubuntu; "
                      "`make prometheus` does it as root)")


def prometheus_path() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)


def ensure_prometheus() -> str:
    """The prometheus binary, installed with apt-get (as root) when missing; AssertionError
    with what to do when it cannot be."""
    found = prometheus_path()
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
        done = subprocess.run(install, env=env, capture_output=True, timeout=600)
        if done.returncode != 0:  # the package lists may be missing or stale
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, timeout=600)
        found = prometheus_path()
        if found:
            return found
        raise AssertionError(f"{PROMETHEUS_MISSING}; apt-get said: "
                             f"{done.stderr.decode(errors='replace')[-1000:]}")
    raise AssertionError(PROMETHEUS_MISSING)


class PrometheusServer(ServerProcess):
    """`prometheus` scraping `targets` ("host:port" of emulators) at /metrics every second."""

    start_timeout = 60.0

    def __init__(self, work_dir: str | Path, targets: list[str], binary: str | None = None
                 ) -> None:
        self.binary = binary or ensure_prometheus()
        self.work_dir = Path(work_dir)
        self.port = free_port()
        self.targets = targets
        self.log_path = self.work_dir / "prometheus.log"
        self.name = f"prometheus on {self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        return [self.binary, f"--config.file={self.work_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    def start(self) -> PrometheusServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "pubsub-emulator", "scrape_interval": "1s",
                                      "static_configs": [{"targets": self.targets}]}]}
        (self.work_dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._launch()
        return self

    def _ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query: [{"metric": {...}, "value": [t, "v"]}]."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]["result"]
