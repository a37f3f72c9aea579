#!/usr/bin/env bash
# Generate the Python modules for proto/sonm/v1/*.proto into $1 (sonm_p2p/_pb for `make proto`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
mkdir -p "$out"
.venv/bin/python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" \
    --grpc_python_out="$out" proto/sonm/v1/*.proto
# protoc writes absolute imports of the proto package; make them relative to sonm_p2p._pb.
for f in "$out"/sonm/v1/*.py "$out"/sonm/v1/*.pyi; do
    sed -i -E 's/^from sonm\.v1 import /from sonm_p2p._pb.sonm.v1 import /' "$f"
done
touch "$out/__init__.py" "$out/sonm/__init__.py" "$out/sonm/v1/__init__.py"
