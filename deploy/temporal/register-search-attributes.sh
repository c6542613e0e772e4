#!/usr/bin/env bash
# Register the search attributes MigrationWorkflow upserts. Run once per namespace.
# Uses TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE (and TEMPORAL_API_KEY or TLS flags) like every skyshift process.
set -euo pipefail
address="${TEMPORAL_ADDRESS:-127.0.0.1:7233}"
namespace="${TEMPORAL_NAMESPACE:-default}"
# The same table as workflows/state.py SEARCH_ATTRIBUTES (tests/test_cli.py checks they agree).
for spec in SkyshiftPhase=Keyword SkyshiftTrafficPercent=Int SkyshiftVerdict=Keyword SkyshiftOutcome=Keyword; do
  temporal operator search-attribute create --address "$address" --namespace "$namespace" \
    --name "${spec%%=*}" --type "${spec##*=}" || echo "(${spec%%=*} may already exist)"
done
