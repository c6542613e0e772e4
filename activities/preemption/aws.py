"""AWS EC2 spot notices through IMDSv2: `spot/instance-action` (the 2-minute notice) and the earlier,
best-effort `events/recommendations/rebalance`.

IMDSv2 is a session protocol: PUT `/latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
returns a token; every GET carries it in `X-aws-ec2-metadata-token`, and an instance that requires
IMDSv2 answers 401 without it. A 404 on either path means "no notice". AWS recommends polling every
5 seconds. The address variable is the one the AWS SDKs read (`AWS_EC2_METADATA_SERVICE_ENDPOINT`).
"""

from __future__ import annotations

import time
from datetime import datetime

import requests

from activities.preemption.base import Notice, UnreadableAnswer, Watcher, utcnow

TOKEN_PATH = "/latest/api/token"
INSTANCE_ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
#: Six hours, the longest IMDSv2 allows; renewed a minute before it lapses or on a 401.
TOKEN_TTL_S = 21600


class AwsWatcher(Watcher):
    provider = "aws"
    address_variable = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
    default_address = "http://169.254.169.254"
    default_poll_interval_s = 5.0

    def __init__(self, config) -> None:
        super().__init__(config)
        self._token: str | None = None
        self._token_expires = 0.0

    def _fresh_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires - 60:
            response = self.session.put(
                self.address + TOKEN_PATH,
                headers={TOKEN_TTL_HEADER: str(TOKEN_TTL_S)},
                timeout=self.config.request_timeout_s,
            )
            if response.status_code != 200 or not response.text:
                raise UnreadableAnswer(f"IMDSv2 token: HTTP {response.status_code} from {self.address}{TOKEN_PATH}")
            self._token = response.text.strip()
            self._token_expires = time.monotonic() + TOKEN_TTL_S
        return self._token

    def _get(self, path: str) -> requests.Response:
        response = self._get_with_token(path)
        if response.status_code == 401:
            self._token = None  # expired, or the metadata service restarted: one fresh token, once
            response = self._get_with_token(path)
        return response

    def _get_with_token(self, path: str) -> requests.Response:
        return self.session.get(
            self.address + path, headers={TOKEN_HEADER: self._fresh_token()}, timeout=self.config.request_timeout_s
        )

    def look(self) -> list[Notice]:
        notices = []
        action = self._json(INSTANCE_ACTION_PATH)
        if action is not None:
            if not isinstance(action, dict) or action.get("action") not in ("terminate", "stop", "hibernate"):
                raise UnreadableAnswer(f"{INSTANCE_ACTION_PATH}: unexpected answer {str(action)[:120]!r}")
            deadline = _parse_time(action.get("time"), INSTANCE_ACTION_PATH)
            notices.append(
                Notice(
                    provider="aws",
                    kind="preempt",
                    deadline=deadline,
                    seen_at=utcnow(),
                    key=f"aws:instance-action:{action['action']}:{action.get('time')}",
                    detail=action,
                )
            )
        rebalance = self._json(REBALANCE_PATH)
        if rebalance is not None:
            if not isinstance(rebalance, dict) or "noticeTime" not in rebalance:
                raise UnreadableAnswer(f"{REBALANCE_PATH}: unexpected answer {str(rebalance)[:120]!r}")
            notices.append(
                Notice(
                    provider="aws",
                    kind="rebalance",
                    deadline=None,
                    seen_at=utcnow(),
                    key=f"aws:rebalance:{rebalance['noticeTime']}",
                    detail=rebalance,
                )
            )
        return notices

    def _json(self, path: str) -> object | None:
        response = self._get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise UnreadableAnswer(f"{path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError as error:
            raise UnreadableAnswer(f"{path}: not JSON ({error})") from None


def _parse_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise UnreadableAnswer(f"{where}: time {str(value)[:60]!r} is not ISO 8601") from None
