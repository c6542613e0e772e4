#!/usr/bin/env bash
# Issue 12's GPU checks in one go on a lent GPU machine: `skyshift bench --json` (the full suite, 60 s sustained run
# included), the table with every figure as a share of its datasheet peak (the device's own and H100 SXM's), and the
# bench tests (their GPU-only tests run there). About 3-4 minutes on one H200.
#
#   here, once:  bash bench/gpu_wheels.sh        # .whl/: pydantic, temporalio... which the GPU image lacks
#   device:      run(command="bash bench/gpu_suite.sh", carry=[".whl"], timeout_s=420)
#
# Output in $OUT (or ./gpu-out): env.txt, bench.json, bench.err, bench.txt, tests.log. Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/skyshift-site.XXXX)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
  export PYTHONPATH=$site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi || true
  nvidia-smi topo -m || true
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'GPU(s)')"
} > "$out/env.txt" 2>&1

started=$SECONDS
timeout 300 "$py" -m starters.cmd_bench --json > "$out/bench.json" 2> "$out/bench.err"
echo "skyshift bench --json: exit $? in $((SECONDS - started)) s"

"$py" - "$out/bench.json" <<'PY' 2>&1 | tee "$out/bench.txt"
import sys

from rich.console import Console

from activities.microsuite import BenchResult, ceiling_for, ceiling_of
from starters.cmd_bench import render

result = BenchResult.model_validate_json(open(sys.argv[1]).read())
render(result, Console(width=220, no_color=True, force_terminal=False, highlight=False))
# The issue asks for the figures next to H100 SXM's datasheet (989 bf16 TFLOPS dense, 3.35 TB/s) whatever GPU ran them.
h100 = ceiling_for("NVIDIA H100 80GB HBM3")
print(f"\nagainst {h100.model} ({h100.source}) and this device's own entry:")
for m in result.suite.measurements:
    own = ceiling_of(result.suite.device_name, m)
    ref = ceiling_of("NVIDIA H100 80GB HBM3", m)
    if ref:
        mine = f"{own.fraction:6.1%} of {own.model} {own.ceiling:g}" if own else "no entry for this device"
        print(f"  {m.name:24} {m.median:10.4g} {m.unit:8} {ref.fraction:6.1%} of H100 SXM {ref.ceiling:g}   {mine}")
PY

started=$SECONDS
timeout 200 "$py" -m pytest -q -p no:cacheprovider --noconftest -rs tests/test_bench_suite.py tests/test_bench_cli.py \
  2>&1 | tee "$out/tests.log"
status=${PIPESTATUS[0]}
echo "tests: exit $status in $((SECONDS - started)) s"
exit "$status"
