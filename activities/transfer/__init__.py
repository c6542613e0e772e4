"""Moving objects between environments: copy, verify, archive and their compensations.

`chunking` and `manifest` fingerprint objects (FastCDC + BLAKE3), `delta` rebuilds changed objects
from chunks the target already holds, `sync` runs it per key range, `ledger` records what a
migration created so rollback can remove exactly that, `archive` does decommission's last steps.
"""
