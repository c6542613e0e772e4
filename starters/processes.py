"""Child processes the demo supervises (workers, endpoints, router), stopped together on exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from skyshift.runtime import state_dir


class ProcessGroup:
    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`env`: variables added to this process's own environment (a switch only that worker has)."""
        logs = state_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
            )
        self.children[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return state_dir() / "logs" / f"{name}.log"

    def check(self) -> None:
        for name, process in self.children.items():
            if process.poll() is not None:
                tail = self.log_path(name).read_text()[-1500:]
                raise RuntimeError(f"{name} exited with {process.returncode}; its log ends:\n{tail}")

    def wait_http(self, name: str, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=1).close()
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f}s; see {self.log_path(name)}")

    def stop_all(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 35
        for process in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
