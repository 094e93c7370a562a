#!/usr/bin/env bash
# Prepare the GPU run for a GPU machine that cannot reach the network. Run it here, in a checkout that can
# reach the package registry; then carry .official_var and .whl (both git-ignored) to the GPU machine and run
# benchmarks/run_gpu_suite.sh there (benchmarks/README.md, "The GPU run").
#
#   bash benchmarks/prepare_gpu_run.sh [OFFICIAL_VAR_DIR]
#
# - .official_var/: a copy of the official VAR code that the suite times beside ours (OFFICIAL_VAR_DIR: a
#   checkout of FoundationVision/VAR or the pinned snapshot; default ../shared/reference/var_official). An
#   existing .official_var/ is left as it is.
# - .whl/: wheels of what the GPU image lacks for the suite's train section (zarr and the packages it needs
#   that such images lack), for that machine's Python (PY_VERSION, default 3.12) on x86-64 Linux, at the
#   versions installed in .venv (else the pinned ones below). The wheels already in .whl/ are replaced (two
#   versions of one package, or wheels of two Pythons, would make the install on the GPU machine fail).
# Nothing else is written.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-../shared/reference/var_official}
py_version=${PY_VERSION:-3.12}

if [ -e .official_var ]; then
  if [ ! -f .official_var/models/var.py ] || [ ! -f .official_var/dist.py ]; then
    echo "error: .official_var exists but holds no official VAR code (models/var.py, dist.py); move it away first" >&2
    exit 2
  fi
  echo ".official_var: present, left as it is"
else
  if [ ! -f "$src/models/var.py" ] || [ ! -f "$src/dist.py" ]; then
    echo "error: $src: no official VAR code there (models/var.py, dist.py); name the folder as the first argument" >&2
    exit 2
  fi
  mkdir .official_var
  cp -r "$src/." .official_var/
  echo ".official_var: copied from $src"
fi

declare -A pinned=([zarr]=3.1.6 [numcodecs]=0.16.6 [donfig]=0.8.1.post1 [google-crc32c]=1.9.0)
specs=()
for name in zarr numcodecs donfig google-crc32c; do
  version=""
  if [ -x .venv/bin/python ]; then
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || true)
  fi
  specs+=("$name==${version:-${pinned[$name]}}")
done
mkdir -p .whl
rm -f .whl/*.whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py_version" --implementation cp \
  "${platforms[@]}" -d .whl "${specs[@]}"
echo ".whl: ${specs[*]} for Python $py_version ($(du -sh .whl | cut -f1))"

commit=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  commit="$commit+dirty"
  echo "warning: the checkout has uncommitted changes; the run will time them and record $commit" >&2
fi
echo "then, on the GPU machine (carry .official_var and .whl), as two device commands (benchmarks/README.md, \"The GPU run\"):"
echo "  PART=main bash benchmarks/run_gpu_suite.sh $commit"
echo "  PART=diagnostics bash benchmarks/run_gpu_suite.sh $commit"
echo "or, on a machine without a time limit, all in one: bash benchmarks/run_gpu_suite.sh $commit"
