#!/usr/bin/env bash
# Checks pyproject.toml's lower bounds: a fresh venv with the OLDEST releases the bounds allow (uv's
# --resolution lowest-direct; torch pinned to the version named), then the cache, training, inference and
# command-line tests and a short radar-demo. Not part of CI (it downloads the old releases and takes minutes);
# run it when a bound or a dependency's use changes.
#
#   bash ci/lowest_deps.sh [VENV_DIR]        (default: a new temporary folder, removed at the end)
#   TORCH=2.13.0  the torch release to pin (installing another may download a multi-GB CUDA build)
#   TESTS="..."   the test paths to run (default below)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.13.0}
TESTS=${TESTS:-"tests/cache tests/inference tests/train/test_cli.py tests/train/test_resume.py tests/train/test_datamodule.py tests/test_bad_input.py tests/test_write_failures.py"}
venv=${1:-}
if [ -z "$venv" ]; then
  venv=$(mktemp -d)/venv
  trap 'rm -rf "$(dirname "$venv")"' EXIT
elif [ -e "$venv" ]; then
  echo "lowest_deps: $venv exists: name a new folder" >&2; exit 2
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "torch==$TORCH" uv
constraints=$(dirname "$venv")/lowest_deps_constraints.txt
echo "torch==$TORCH" > "$constraints"
# a copy of the project, so that the editable install writes nothing into this checkout
src=$(dirname "$venv")/src
git ls-files -z | tar --null -T - -cf - | (mkdir -p "$src" && tar -xf - -C "$src")
"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" --resolution lowest-direct -c "$constraints" -e "$src[dev]"
echo "lowest_deps: installed"
"$venv/bin/uv" pip list --python "$venv/bin/python" | grep -iE '^(torch|numpy|lightning|torchmetrics|jsonargparse|peft|zarr|webdataset|accelerate|tensorboard|safetensors|pillow|pyyaml|rich|tqdm|transformers) '
cd "$src"
# shellcheck disable=SC2086
"$venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS
"$venv/bin/radar-demo" --output "$(dirname "$venv")/demo" --train_steps 4
echo "lowest_deps: the lower bounds hold (torch $TORCH)"
