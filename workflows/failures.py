"""Reading a chain of Temporal failures: what an operator should be told, and whether it was a cancel.

An activity's error reaches the workflow wrapped (ActivityError → ApplicationError → ...); the
outcome line names the innermost causes, and a cancellation delivered mid-activity or mid-child must
end as `cancelled`, not `failed`.
"""

from __future__ import annotations

import asyncio

from temporalio.exceptions import CancelledError, FailureError


def failure_reason(error: BaseException) -> str:
    """The innermost message of a chain of Temporal failures (activity → application error → ...)."""
    messages = []
    while error is not None:
        message = error.message if isinstance(error, FailureError) else str(error)
        if message and message not in messages:
            messages.append(message)
        error = error.cause if isinstance(error, FailureError) else error.__cause__
    return ": ".join(messages[-2:]) if messages else "unknown failure"


def was_cancelled(error: BaseException | None) -> bool:
    """True when a failure chain ends in a cancellation (a cancel delivered during an activity or child)."""
    while error is not None:
        if isinstance(error, CancelledError | asyncio.CancelledError):
            return True
        error = error.cause if isinstance(error, FailureError) else error.__cause__
    return False
