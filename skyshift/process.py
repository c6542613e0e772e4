"""Ending a skyshift process (the CLI, a worker) without the crash at interpreter finalization."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    """End the CLI process with `code` once its work is done, without interpreter finalization.

    The Temporal client's Rust core keeps Tokio threads that take the GIL from outside Python; one that
    wakes while the interpreter finalizes aborts the process ("Fatal Python error: PyGILState_Release
    ... finalizing", exit 134) after the command already succeeded (temporalio/sdk-python#300, open;
    the SDK has no way to stop that runtime). So everything Python owns is shut down here, in order —
    exit handlers (the fingerprint pool's processes), logging, stdout and stderr — and the process ends
    with `os._exit`, before any such thread can touch a finalizing interpreter.
    """
    code = code if isinstance(code, int) else 1
    try:
        atexit._run_exitfuncs()  # what a normal exit would run; os._exit skips it (CPython, no public twin)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BrokenPipeError, ValueError):  # a reader that went away, or a closed stream
                stream.flush()
    finally:
        os._exit(code)
