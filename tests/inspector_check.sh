#!/usr/bin/env bash
# The MCP Inspector CLI (an independent MCP client, pinned) against the autotts MCP server, over stdio and HTTP:
# lists the tools, prompts and resources, calls every tool (including run_controller and a bad input), and checks
# the bearer token is enforced over HTTP.
#
#   bash tests/inspector_check.sh [STUDY_FOLDER]
#
# Exit 0: passed ("inspector check passed" on stdout); 3: the Inspector could not be fetched from the npm
# registry; anything else: a failed check. Needs Node.js >= 20 with npx, and Python with autotts installed.
set -euo pipefail

INSPECTOR="@modelcontextprotocol/inspector@2.12.0"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
STUDY="${1:-$WORK/study}"
HTTP_PID=""
cleanup() {
  if [[ -n "$HTTP_PID" ]]; then kill "$HTTP_PID" 2>/dev/null || true; wait "$HTTP_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# The server command: `autotts mcp` once autotts/cli.py registers it, else the module entry point.
if autotts mcp --help >/dev/null 2>&1; then SERVER=(autotts mcp); else SERVER=("$PY" -m autotts mcp); fi

if ! npx -y "$INSPECTOR" --cli --version >"$WORK/version.txt" 2>"$WORK/version.err"; then
  echo "could not run $INSPECTOR via npx:" >&2; tail -5 "$WORK/version.err" >&2; exit 3
fi
echo "inspector $(tail -1 "$WORK/version.txt")"

# A small study: the demo split, 3 seeds, β in {0, 1}.
"$PY" -m autotts study init "$STUDY" --seeds 3 --betas 0,1 --timeout 120 >/dev/null

inspect() {  # inspect OUT_FILE ARGS...: run the Inspector CLI against the stdio server, JSON to OUT_FILE
  local out="$1"; shift
  npx -y "$INSPECTOR" --cli "${SERVER[@]}" "$STUDY" "$@" --format json >"$out" 2>"$out.err"
}

check() {  # check FILE PYTHON_EXPR: evaluate EXPR with `d` = the parsed JSON document
  "$PY" - "$1" "$2" <<'EOF' || fail "$2 on $(head -c 600 "$1")"
import json, sys
d = json.load(open(sys.argv[1]))
assert eval(sys.argv[2], {"d": d, "json": json}), sys.argv[2]
EOF
}

# --- stdio ------------------------------------------------------------------------------------------------------
inspect "$WORK/tools.json" --method tools/list || fail "tools/list: $(cat "$WORK/tools.json.err")"
check "$WORK/tools.json" '{t["name"] for t in d["result"]["tools"]} == {"list_environments", "get_baselines", "run_controller", "inspect_trace", "get_history", "get_controller", "compare_runs"}'
check "$WORK/tools.json" 'all(t.get("outputSchema") for t in d["result"]["tools"])'

inspect "$WORK/prompts.json" --method prompts/list || fail "prompts/list"
check "$WORK/prompts.json" '"discover" in [p["name"] for p in d["result"]["prompts"]]'
inspect "$WORK/prompt.json" --method prompts/get --prompt-name discover || fail "prompts/get"
check "$WORK/prompt.json" '"probe_new" in json.dumps(d)'
inspect "$WORK/resource.json" --method resources/read --uri autotts://controller-format || fail "resources/read"
check "$WORK/resource.json" '"get_new_branch_final_answer" in json.dumps(d)'

inspect "$WORK/envs.json" --method tools/call --tool-name list_environments || fail "list_environments"
check "$WORK/envs.json" '"synthetic-demo/demo[0::2]" in json.dumps(d) and "[1::2]" not in json.dumps(d)'

inspect "$WORK/baselines.json" --method tools/call --tool-name get_baselines || fail "get_baselines"
check "$WORK/baselines.json" '"SC@64" in json.dumps(d)'

"$PY" -c 'import json; from mcp_server.prompt import EXAMPLE_CONTROLLER as c; print(json.dumps({"code": c, "name": "inspector"}))' >"$WORK/args.json"
inspect "$WORK/run.json" --method tools/call --tool-name run_controller --tool-args-json "$(cat "$WORK/args.json")" \
  || fail "run_controller: $(head -c 2000 "$WORK/run.json") $(tail -5 "$WORK/run.json.err")"
check "$WORK/run.json" 'd["result"]["structuredContent"]["status"] == "ok" and not d["result"].get("isError")'
RUN_ID="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["result"]["structuredContent"]["run_id"])' "$WORK/run.json")"

inspect "$WORK/trace.json" --method tools/call --tool-name inspect_trace --tool-arg "run_id=$RUN_ID" || fail "inspect_trace"
check "$WORK/trace.json" 'd["result"]["structuredContent"]["kind"] == "digest"'
inspect "$WORK/episode.json" --method tools/call --tool-name inspect_trace \
  --tool-args-json "{\"run_id\": \"$RUN_ID\", \"question\": 1, \"seed\": 0, \"page_size\": 10}" || fail "inspect_trace episode"
check "$WORK/episode.json" 'd["result"]["structuredContent"]["kind"] == "episode"'

inspect "$WORK/history.json" --method tools/call --tool-name get_history || fail "get_history"
check "$WORK/history.json" '"inspector" in json.dumps(d)'
inspect "$WORK/source.json" --method tools/call --tool-name get_controller --tool-arg "run_id=$RUN_ID" || fail "get_controller"
check "$WORK/source.json" '"class ConfidentVote" in d["result"]["structuredContent"]["source"]'

# A bad input is a tool error (isError), not a crash. The Inspector may exit non-zero for it; read its output.
inspect "$WORK/bad.json" --method tools/call --tool-name inspect_trace --tool-arg run_id=r9999 || true
grep -q "no run r9999" "$WORK/bad.json" "$WORK/bad.json.err" || fail "unknown run id: $(cat "$WORK/bad.json" "$WORK/bad.json.err")"

# --- streamable HTTP with a bearer token --------------------------------------------------------------------------
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${SERVER[@]}" "$STUDY" --http --port "$PORT" --token-file "$WORK/token" 2>"$WORK/http.err" &
HTTP_PID=$!
for _ in $(seq 1 100); do
  if "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.5)" 2>/dev/null; then break; fi
  kill -0 "$HTTP_PID" 2>/dev/null || fail "HTTP server died: $(cat "$WORK/http.err")"
  sleep 0.2
done
TOKEN="$(cat "$WORK/token")"
URL="http://127.0.0.1:$PORT/mcp"
npx -y "$INSPECTOR" --cli "$URL" --header "Authorization: Bearer $TOKEN" --method tools/list --format json \
  >"$WORK/http-tools.json" 2>"$WORK/http-tools.err" || fail "HTTP tools/list: $(cat "$WORK/http-tools.err")"
check "$WORK/http-tools.json" 'len(d["result"]["tools"]) == 7'
npx -y "$INSPECTOR" --cli "$URL" --header "Authorization: Bearer $TOKEN" --method tools/call \
  --tool-name get_history --format json >"$WORK/http-history.json" 2>"$WORK/http-history.err" || fail "HTTP get_history"
check "$WORK/http-history.json" '"inspector" in json.dumps(d)'
if npx -y "$INSPECTOR" --cli "$URL" --header "Authorization: Bearer wrong-token" --method tools/list --format json \
    --stored-auth-only >"$WORK/http-denied.json" 2>&1; then
  fail "HTTP accepted a wrong bearer token"
fi
grep -q "unauthorized" "$WORK/http-denied.json" || fail "wrong token: unexpected output $(cat "$WORK/http-denied.json")"

echo "inspector check passed"
