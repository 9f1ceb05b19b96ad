#!/usr/bin/env bash
# The quickstart (README.md, "Run it as a service"): the video pipeline as a service, one CLI
# step at a time, on the embedded SQLite: start the server, create a tenant, compile and upload
# the bundle, start two function runners, start the video workflow, watch it, print its trace.
#
#   make quickstart          (or: bash tenants/media-encoding/quickstart.sh)
#
# Everything it makes lives in build/quickstart/ (the database, the logs, the blobs); the server
# and the runners stop when it ends. PORT (default 8080) moves the server; EMIRAX and PYTHON
# name the command and the interpreter (default: the project's .venv); QUICKSTART_HOME moves
# build/quickstart.
set -euo pipefail
cd "$(dirname "$0")/../.."

EMIRAX=${EMIRAX:-.venv/bin/emirax}
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-8080}
export EMIRAX_HOME=${QUICKSTART_HOME:-$PWD/build/quickstart}
export EMIRAX_SERVER=http://127.0.0.1:$PORT
export MEDIA_ENCODING_STORE=$EMIRAX_HOME/blobs
rm -rf "$EMIRAX_HOME" && mkdir -p "$EMIRAX_HOME"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. the server, on the embedded SQLite ($EMIRAX_HOME/emirax.db)"
"$EMIRAX" serve --port "$PORT" > "$EMIRAX_HOME/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fs "$EMIRAX_SERVER/healthz" > /dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$EMIRAX_HOME/server.log"; exit 1; }
    sleep 0.1
done
echo "serving on $EMIRAX_SERVER; the admin token is in $EMIRAX_HOME/admin-token"
export EMIRAX_ADMIN_TOKEN=$(cat "$EMIRAX_HOME/admin-token")

step "2. a tenant"
"$EMIRAX" tenants create media --json > "$EMIRAX_HOME/tenant.json"
export EMIRAX_TOKEN=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["token"])' "$EMIRAX_HOME/tenant.json")
echo "tenant media created; its token is in $EMIRAX_HOME/tenant.json"

step "3. compile the rules and upload the bundle"
"$EMIRAX" compile tenants/media-encoding -o "$EMIRAX_HOME/media-encoding.emxb"
"$EMIRAX" upload "$EMIRAX_HOME/media-encoding.emxb"

step "4. two function runners (logs in $EMIRAX_HOME/runner-*.log)"
for i in 1 2; do
    "$EMIRAX" runner tenants/media-encoding/functions.py --concurrency 8 --name "runner-$i" \
        > "$EMIRAX_HOME/runner-$i.log" 2>&1 &
    pids+=($!)
done

step "5. start the video workflow"
"$EMIRAX" workflows start media.encode.VideoEncode --id movie-1 --facts tenants/media-encoding/request.json

step "6. watch it: split, 31 encodes in parallel, assemble, index, the thumbnail"
"$EMIRAX" workflows watch movie-1 --timeout 120

step "7. its trace"
"$EMIRAX" workflows trace movie-1
echo
echo "runner-1 ran $(grep -c ': ok' "$EMIRAX_HOME/runner-1.log" || true) invocations, runner-2 $(grep -c ': ok' "$EMIRAX_HOME/runner-2.log" || true)"
