"""Runtime settings shared by starters and workers: stack addresses and the Temporal client."""

from __future__ import annotations

import os
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import TLSConfig

#: Variables the embedded stack publishes; a value already in the environment always wins.
STACK_VARIABLES = ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST")


def state_dir() -> Path:
    """Where the embedded stack keeps its state: `$SKYSHIFT_HOME` or `.skyshift/` in the cwd."""
    return Path(os.environ.get("SKYSHIFT_HOME") or Path.cwd() / ".skyshift")


def env_file() -> Path:
    return state_dir() / "env"


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """Parse a shell-sourceable file of KEY=VALUE lines (comments and blanks ignored)."""
    path = path or env_file()
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load_stack_env() -> dict[str, str]:
    """Export the embedded stack's addresses into os.environ where not already set.

    Returns what was applied, so callers can say where their endpoints came from.
    """
    applied: dict[str, str] = {}
    for key, value in read_env_file().items():
        if key in STACK_VARIABLES and not os.environ.get(key):
            os.environ[key] = value
            applied[key] = value
    return applied


def temporal_address() -> str:
    return os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233")


def temporal_namespace() -> str:
    return os.environ.get("TEMPORAL_NAMESPACE", "default")


def tls_config() -> TLSConfig | bool:
    """mTLS from TEMPORAL_TLS_CERT/TEMPORAL_TLS_KEY (file paths), plain TLS with an API key, else none."""
    cert, key = os.environ.get("TEMPORAL_TLS_CERT"), os.environ.get("TEMPORAL_TLS_KEY")
    if bool(cert) != bool(key):
        raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY must be set together (paths to PEM files)")
    if cert and key:
        return TLSConfig(client_cert=Path(cert).read_bytes(), client_private_key=Path(key).read_bytes())
    return bool(os.environ.get("TEMPORAL_API_KEY"))


async def connect(address: str | None = None, namespace: str | None = None) -> Client:
    """Connect with the pydantic data converter and tracing, as every skyshift process must.

    Workflows and activities exchange pydantic models; a client built any other way would
    decode them as plain dicts. Temporal Cloud: set TEMPORAL_API_KEY, or TEMPORAL_TLS_CERT and
    TEMPORAL_TLS_KEY; the secrets stay in the process environment, never in workflow inputs.
    """
    return await Client.connect(
        address or temporal_address(),
        namespace=namespace or temporal_namespace(),
        api_key=os.environ.get("TEMPORAL_API_KEY") or None,
        tls=tls_config(),
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor()],
    )
