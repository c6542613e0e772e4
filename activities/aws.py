"""boto3 clients built one way for every AWS-facing adapter (S3 stores, Route 53 routers)."""

from __future__ import annotations

import boto3
from botocore.config import Config

_LOOPBACK = ("http://127.", "http://localhost", "http://[::1]")


def aws_client(service: str, endpoint: str | None, credentials: str | None, max_pool: int = 10):
    """A client for `service`; `credentials` names an AWS profile on this worker (never a secret).

    With no credentials configured and a loopback endpoint (moto, the embedded stack), placeholder
    keys are used: an emulator accepts any signature and a real endpoint never sees them.
    """
    session = boto3.Session(profile_name=credentials) if credentials else boto3.Session()
    keys = {}
    if session.get_credentials() is None and endpoint and endpoint.startswith(_LOOPBACK):
        keys = {"aws_access_key_id": "skyshift-emulator", "aws_secret_access_key": "skyshift-emulator"}
    return session.client(
        service,
        endpoint_url=endpoint or None,
        region_name=session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=max_pool),
        **keys,
    )
