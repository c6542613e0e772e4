"""The dev stack's GCS emulator (`gcp-storage-emulator`, in memory), with two of its limits lifted.

Both made the emulator, not the engine, the figure `make bench` measured for GCS targets:

- It answers from `http.server.HTTPServer`, whose listen backlog is 5. The engine keeps tens of
  requests in flight (a store's `parallel_requests` times the ranges a worker applies at once), as
  it should against real GCS; past five, the kernel drops connection attempts and each waits for a
  SYN retransmit (1 s, 3 s, 7 s ... up to the client's 60 s connect timeout). A backlog of 1,024
  queues them instead.
- After every write it serialises the metadata of *every* object to a `.meta` snapshot, which in
  memory mode nobody reads (the snapshot is read once, at start-up, and dies with the process):
  quadratic in objects, 18 objects/s at 2,000 objects and one core pegged at 3,000. In memory mode
  the snapshot is skipped.

The emulator still serves one request at a time; `make bench` measures that ceiling with plain
clients beside the engine.
"""

from __future__ import annotations

import sys
from http import server


def lift_limits() -> None:
    """Patch this process's emulator classes (before its server starts); idempotent."""
    from gcp_storage_emulator.storage import Storage

    server.HTTPServer.request_queue_size = 1024  # read by socketserver.TCPServer.server_activate (listen)
    snapshot = Storage._write_config_to_file
    if getattr(snapshot, "lifted", False):
        return

    def write_config(self: Storage) -> None:
        if not self._use_memory_fs:
            snapshot(self)

    write_config.lifted = True  # type: ignore[attr-defined]
    Storage._write_config_to_file = write_config


def main() -> int:
    from gcp_storage_emulator.__main__ import main as emulator

    lift_limits()
    return emulator(sys.argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
