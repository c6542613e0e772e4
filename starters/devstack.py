"""`skyshift dev up|down|status`: the embedded default stack on 127.0.0.1.

Starts the Temporal dev server (SQLite under .skyshift/, UI on :8233, skyshift's search attributes
registered), an S3 server (moto) and a GCS emulator as background processes; records their PIDs
so `down` stops exactly what `up` started, and publishes their addresses in `.skyshift/env`.
A preferred port that is taken by something else is replaced by a free one, and said so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from skyshift.runtime import state_dir

#: The search attributes MigrationWorkflow writes, as `temporal server start-dev --search-attribute` takes
#: them. A copy of workflows.state.SEARCH_ATTRIBUTES kept here so `dev up` does not import the workflow
#: models (and the activity modules behind them); tests/test_cli.py checks the two agree.
SEARCH_ATTRIBUTES = {
    "SkyshiftPhase": "Keyword",
    "SkyshiftTrafficPercent": "Int",
    "SkyshiftVerdict": "Keyword",
    "SkyshiftOutcome": "Keyword",
}
PREFERRED_PORTS = {"temporal": 7233, "temporal-ui": 8233, "s3": 5310, "gcs": 9023}


class StackError(RuntimeError):
    pass


class Service(BaseModel):
    name: str
    pid: int
    port: int
    log: str


class Stack(BaseModel):
    services: list[Service]
    ui_port: int
    env: dict[str, str]


def _bin(name: str) -> str:
    """Prefer the executable installed beside this interpreter (the project's venv)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"'{name}' not found: install the stack extras (pip install -e '.[stack]' or `make demo`)")
    return found


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pick_port(name: str, taken: set[int]) -> int:
    port = PREFERRED_PORTS[name]
    if port in taken or port_open(port):
        replacement = free_port()
        print(f"port {port} for {name} is in use; using {replacement}", file=sys.stderr)
        port = replacement
    taken.add(port)
    return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stack_file() -> Path:
    return state_dir() / "stack.json"


def read_stack() -> Stack | None:
    path = _stack_file()
    return Stack.model_validate_json(path.read_text()) if path.exists() else None


def stack_running(stack: Stack | None) -> bool:
    return stack is not None and all(_alive(s.pid) and port_open(s.port) for s in stack.services)


def _spawn(name: str, command: list[str], port: int) -> Service:
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Service(name=name, pid=process.pid, port=port, log=str(log))


def _wait_ready(services: list[Service], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for service in services:
        while not port_open(service.port):
            if not _alive(service.pid):
                tail = Path(service.log).read_text()[-2000:]
                raise StackError(f"{service.name} exited during start-up; its log ({service.log}) ends:\n{tail}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} did not open port {service.port} within {timeout:.0f}s; see {service.log}"
                )
            time.sleep(0.1)


def write_env_file(env: dict[str, str]) -> Path:
    path = state_dir() / "env"
    lines = ["# Written by `skyshift dev up`; every skyshift command reads it unless these are already set."]
    lines += [f"{key}={value}" for key, value in env.items()]
    temp = path.with_suffix(".tmp")
    temp.write_text("\n".join(lines) + "\n")
    os.replace(temp, path)
    return path


def up() -> tuple[Stack, bool]:
    """Start the stack unless it is already running; return it and whether it was started now."""
    existing = read_stack()
    if stack_running(existing):
        return existing, False
    if existing is not None:
        down()  # a partial stack from a crash: stop what is left before starting anew
    state_dir().mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    temporal_port, ui_port = pick_port("temporal", taken), pick_port("temporal-ui", taken)
    s3_port, gcs_port = pick_port("s3", taken), pick_port("gcs", taken)
    temporal = [
        _bin("temporal"), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(temporal_port),
        "--ui-port", str(ui_port), "--db-filename", str(state_dir() / "temporal.db"), "--log-level", "warn",
    ]  # fmt: skip
    for name, kind in SEARCH_ATTRIBUTES.items():
        temporal += ["--search-attribute", f"{name}={kind}"]
    if os.environ.get("SKYSHIFT_UI_CODEC_ENDPOINT"):  # `skyshift codec-server`: the UI shows decrypted payloads
        temporal += ["--ui-codec-endpoint", os.environ["SKYSHIFT_UI_CODEC_ENDPOINT"]]
    gcs = [sys.executable, "-m", "starters.gcs_emulator"]  # the emulator with its limits lifted (see there)
    gcs += ["start", "-H", "127.0.0.1", "--port", str(gcs_port), "-M", "-q"]
    services = [
        _spawn("temporal", temporal, temporal_port),
        _spawn("s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], s3_port),
        _spawn("gcs", gcs, gcs_port),
    ]
    env = {
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_UI": f"http://127.0.0.1:{ui_port}",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_port}",
    }
    stack = Stack(services=services, ui_port=ui_port, env=env)
    _stack_file().write_text(stack.model_dump_json(indent=2))
    try:
        _wait_ready(services)
    except StackError:
        down()
        raise
    write_env_file(env)
    return stack, True


def down() -> list[str]:
    """Stop what `up` started (and only that); return the names stopped."""
    stack = read_stack()
    if stack is None:
        return []
    stopped = []
    for service in stack.services:
        if _alive(service.pid):
            try:
                os.killpg(service.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopped.append(service.name)
    deadline = time.monotonic() + 10
    for service in stack.services:
        while _alive(service.pid) and time.monotonic() < deadline:
            _reap(service.pid)
            time.sleep(0.1)
        if _alive(service.pid):
            os.killpg(service.pid, signal.SIGKILL)
    for path in (_stack_file(), state_dir() / "env"):
        path.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    """Collect a child that `up` started in this same process (tests), so it stops counting as alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def status() -> dict:
    stack = read_stack()
    if stack is None:
        return {"running": False, "services": []}
    services = [
        {
            "name": s.name,
            "pid": s.pid,
            "port": s.port,
            "alive": _alive(s.pid),
            "listening": port_open(s.port),
            "log": s.log,
        }
        for s in stack.services
    ]
    return {
        "running": all(s["alive"] and s["listening"] for s in services),
        "services": services,
        "ui": f"http://127.0.0.1:{stack.ui_port}",
        "env": stack.env,
        "env_file": str(state_dir() / "env"),
    }


def print_status(info: dict) -> None:
    if not info["services"]:
        print("embedded stack: not started (run `skyshift dev up`)")
        return
    print(f"embedded stack: {'running' if info['running'] else 'DEGRADED'}")
    for s in info["services"]:
        state = "up" if s["alive"] and s["listening"] else "DOWN"
        print(f"  {s['name']:<9} {state:<5} 127.0.0.1:{s['port']}  pid {s['pid']}  log {s['log']}")
    print(f"  Temporal UI: {info['ui']}")
    print(f"  addresses:   {info['env_file']}")
