#!/usr/bin/env bash
# Run every benchmark in benchmarks/ with the given flags (e.g. --quick), writing JSON to results/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results
PY=${PY:-.venv/bin/python}
for script in benchmarks/[a-z]*.py; do
  name=$(basename "$script" .py)
  # a data generator the benchmarks import, not a benchmark itself
  [ "$name" = make_embeddings ] && continue
  echo "=== $name ==="
  "$PY" "$script" "$@" --json "results/$name.json"
done
