"""Activity failures an operator can read: classified by what they mean, bounded in size.

Retrying cannot fix a permanent store error, so it becomes a non-retryable failure; every other error
keeps its type name (the workflows' retry policies name types) and retries. Either way the failure
that leaves the worker is small: Temporal's server replaces a failure over its blob limit with
"Failure exceeds size limit.", which hides the cause from everyone, so messages are capped and the
first cause in the chain is kept readable inside the message instead of travelling as a chain.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from temporalio.exceptions import ApplicationError, TemporalError

from activities.stores import StoreError

P = ParamSpec("P")
R = TypeVar("R")

#: Characters of a failure message that leave the worker (the server's blob limit is 2 MB; a screen is ~4k).
MAX_FAILURE_CHARS = 4000
#: Characters kept of the first cause when the error itself is long.
CAUSE_CHARS = 600


def bounded(text: str, limit: int = MAX_FAILURE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f" … ({len(text) - limit + 60:,} more characters)"
    return text[: limit - len(note)] + note


def first_cause(error: BaseException) -> BaseException | None:
    """The innermost exception `error` was raised from (or while handling), if any."""
    seen, cause = {id(error)}, error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    found = None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        found = cause
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return found


def describe(error: BaseException) -> str:
    """One bounded line: the error's message, then its first cause (capped so both stay readable)."""
    message = str(error) or type(error).__name__
    cause = first_cause(error)
    if cause is None:
        return bounded(message)
    because = bounded(f"{type(cause).__name__}: {cause}", CAUSE_CHARS)
    return bounded(message, MAX_FAILURE_CHARS - len(because) - 20) + f" (first cause: {because})"


def as_failure(error: BaseException) -> ApplicationError:
    """The bounded ApplicationError an activity raises for `error` (its type name kept for retry policies)."""
    if isinstance(error, ApplicationError):
        non_retryable, kind = error.non_retryable, error.type
    else:
        non_retryable, kind = bool(getattr(error, "permanent", False)), type(error).__name__
    return ApplicationError(describe(error), type=kind, non_retryable=non_retryable)


def _oversized(error: BaseException) -> bool:
    """Whether `error` with its chain of causes would carry more than MAX_FAILURE_CHARS of text."""
    total, seen, current = 0, set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        total += len(str(current))
        current = current.__cause__ or current.__context__
    return total > MAX_FAILURE_CHARS


def fail_fast_on_permanent_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap an activity: permanent store errors stop the workflow's retries; others retry; all are bounded."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except StoreError as error:
            if error.permanent or _oversized(error):
                raise as_failure(error) from None
            raise
        except TemporalError as error:
            if isinstance(error, ApplicationError) and _oversized(error):
                raise as_failure(error) from None
            raise  # cancellation and bounded application failures pass as they are
        except Exception as error:
            if _oversized(error):
                raise as_failure(error) from None
            raise  # small enough to travel as it is (tests and callers may match its class)

    return wrapper
