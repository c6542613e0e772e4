"""A Temporal dev server a test owns: a fixed port and SQLite file, so it can be killed, restarted, read."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, temporal_cli


class DevServer:
    """`temporal server start-dev` on a fixed port and database file, so it can be killed and restarted."""

    def __init__(self, db: Path) -> None:
        self.db, self.port, self.process = db, free_port(), None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [temporal_cli(), "server", "start-dev", "--headless", "--port", str(self.port), "--ui-port",
             str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
             "--db-filename", str(self.db), "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_until_serving()

    def _wait_until_serving(self) -> None:
        probe = [temporal_cli(), "operator", "cluster", "health", "--address", self.address]
        for _ in range(300):  # each probe is a real round trip; the server answers within a second or two
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the dev server at {self.address} did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
