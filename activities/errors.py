"""Turn failures that retrying cannot fix into non-retryable activity failures with clear messages."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError

from activities.stores import StoreError

P = ParamSpec("P")
R = TypeVar("R")


def fail_fast_on_permanent_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap an activity: permanent store errors stop the workflow's retries; others retry."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except StoreError as error:
            if error.permanent:
                raise ApplicationError(str(error), type="StoreError", non_retryable=True) from None
            raise

    return wrapper
