"""Runtime settings shared by starters and workers: stack addresses and the Temporal client."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

#: Variables the embedded stack publishes; a value already in the environment always wins.
STACK_VARIABLES = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_UI",
    "AWS_ENDPOINT_URL_S3",
    "STORAGE_EMULATOR_HOST",
)


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
    return os.environ.get("TEMPORAL_ADDRESS") or "127.0.0.1:7233"


def temporal_namespace() -> str:
    return os.environ.get("TEMPORAL_NAMESPACE") or "default"


def temporal_ui() -> str:
    """The Temporal UI's base URL: `TEMPORAL_UI` (written by `skyshift dev up`), else the dev server default."""
    return (os.environ.get("TEMPORAL_UI") or "http://127.0.0.1:8233").rstrip("/")


def ui_link(workflow_id: str) -> str:
    return f"{temporal_ui()}/namespaces/{temporal_namespace()}/workflows/{workflow_id}"


def rpc_timeout() -> timedelta:
    """How long a query or update waits for a worker to answer (`SKYSHIFT_RPC_TIMEOUT` seconds, default 15).

    Without a bound, `status` or `approve` against a migration whose workers are all down would wait
    forever; with one, the operator hears that no worker answered.
    """
    return timedelta(seconds=float(os.environ.get("SKYSHIFT_RPC_TIMEOUT") or 15))


def data_converter(encrypt: bool | None = None) -> DataConverter:
    """The pydantic converter, plus the AES-GCM codec when encryption is on (`--encrypt`, SKYSHIFT_ENCRYPT=1).

    With encryption, failure messages and stack traces move into the encrypted payload too: an
    error often quotes the very bucket or key the payloads hide.
    """
    from skyshift.codec import RefusingCodec, codec_from_env, encryption_requested

    if not (encryption_requested() if encrypt is None else encrypt):
        # Plaintext out; an encrypted payload in is refused by name (which key to set), not a KeyError.
        return dataclasses.replace(pydantic_data_converter, payload_codec=RefusingCodec())
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec_from_env(),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config() -> TLSConfig | bool:
    """mTLS from TEMPORAL_TLS_CERT/TEMPORAL_TLS_KEY (file paths), plain TLS with an API key, else none."""
    cert, key = os.environ.get("TEMPORAL_TLS_CERT"), os.environ.get("TEMPORAL_TLS_KEY")
    if bool(cert) != bool(key):
        raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY must be set together (paths to PEM files)")
    if cert and key:
        return TLSConfig(client_cert=Path(cert).read_bytes(), client_private_key=Path(key).read_bytes())
    return bool(os.environ.get("TEMPORAL_API_KEY"))


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    *,
    runtime: Runtime | None = None,
    encrypt: bool | None = None,
    service: str = "skyshift",
) -> Client:
    """Connect with the pydantic data converter, the codec if asked for, and tracing if configured.

    Workflows and activities exchange pydantic models; a client built any other way would
    decode them as plain dicts. Temporal Cloud: set TEMPORAL_API_KEY, or TEMPORAL_TLS_CERT and
    TEMPORAL_TLS_KEY; the secrets stay in the process environment, never in workflow inputs.
    `runtime` carries a worker's Prometheus exporter (`skyshift.telemetry.prometheus_runtime`);
    tracing follows the standard OTEL_* variables (`skyshift.telemetry`).
    """
    from skyshift.telemetry import client_plugins

    return await Client.connect(
        address or temporal_address(),
        namespace=namespace or temporal_namespace(),
        api_key=os.environ.get("TEMPORAL_API_KEY") or None,
        tls=tls_config(),
        data_converter=data_converter(encrypt),
        plugins=client_plugins(service),
        runtime=runtime,
    )
