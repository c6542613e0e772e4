#!/usr/bin/env bash
# Fetch, here, the wheels bench/gpu_suite.sh needs on a GPU image that has torch, numpy, rich, nvidia-ml-py and
# pytest but not skyshift's own dependencies (pydantic, temporalio). Versions are this venv's, so both machines
# run the same code. Wheels land in .whl/ (git-ignored through .git/info/exclude) for `run(carry=[".whl"])`.
#   bash bench/gpu_wheels.sh            # CPython 3.12 wheels (the lent H200's python3)
#   PY_VERSION=3.11 bash bench/gpu_wheels.sh   # for a dry run against a local 3.11 interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
venv_python=${VENV_PYTHON:-.venv/bin/python}
py_version=${PY_VERSION:-3.12}
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir .whl
packages=(pydantic pydantic_core annotated-types typing-inspection typing_extensions temporalio nexus-rpc protobuf)
pins=()
for name in "${packages[@]}"; do
  version=$("$venv_python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  pins+=("$name==$version")
done
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$venv_python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py_version" \
  --implementation cp "${platforms[@]}" -d .whl "${pins[@]}"
ls -1 .whl
du -sh .whl
