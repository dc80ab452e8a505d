#!/usr/bin/env bash
# Interoperability check with the official MCP Inspector (CLI mode, stdio transport).
#
# Installs Node 22 and @modelcontextprotocol/inspector into .cache/node (see _node22.sh), then drives
#   headlessly serve --data-dir <tmp> --tenant inspector --actor agent_inspector
# through `mcp-inspector --cli ... --method tools/list | tools/call`, one server process per call
# (so every step after the first also checks that the data outlived the previous process):
#   1. tools/list lists fetch, search and do, each with an object inputSchema
#   2. do create Contact {name} returns the new entity and its Contact.Created event
#   3. fetch Contact <that id> returns the same entity
#   4. search Event finds that Contact.Created event, by that actor
#   5. fetch of a well-formed id that does not exist is a tool error (isError, CONTRACT not_found)
# Each output is parsed with python3; a mismatch prints what was expected and what came back.
# Ends with the line `inspector: N passed, M failed`; exits 1 if M > 0.
#
# Env: HEADLESSLY (the server command, default .venv/bin/headlessly), INSPECTOR_PROTOCOL_ERA
# (legacy|auto|modern; default legacy, which is what the Inspector uses for an ad-hoc target),
# HEADLESSLY_NODE_CACHE, NODE22_VERSION, INSPECTOR_VERSION (see _node22.sh).
set -euo pipefail

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/_node22.sh
. "$SCRIPTS/_node22.sh"

START=$(date +%s.%N)
ensure_node_tools "@modelcontextprotocol/inspector@$INSPECTOR_VERSION"
INSPECTOR="$NODE_CACHE/node_modules/.bin/mcp-inspector"
HEADLESSLY="${HEADLESSLY:-$REPO_ROOT/.venv/bin/headlessly}"
ERA="${INSPECTOR_PROTOCOL_ERA:-legacy}"
[ -x "$HEADLESSLY" ] || { echo "inspector: $HEADLESSLY is not executable (install the package first)" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/headlessly-inspector.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DATA="$WORK/data"
mkdir -p "$DATA"
SERVER=("$HEADLESSLY" serve --data-dir "$DATA" --tenant inspector --actor agent_inspector)
echo "inspector: node $("$NODE22" --version), inspector $("$INSPECTOR" --cli --version 2>/dev/null | tail -1), protocol era $ERA"
echo "inspector: server: ${SERVER[*]}"

PASSED=0
FAILED=0
STEP=0

# inspect <name> <inspector args...>: runs one Inspector CLI call; the JSON envelope goes to
# $WORK/<name>.json, stderr (the Inspector's and the server's) to $WORK/<name>.err, exit code to RC.
inspect() {
    local name="$1"
    shift
    STEP=$((STEP + 1))
    local cmd=("$INSPECTOR" --cli --format json --protocol-era "$ERA" "${SERVER[@]}" "$@")
    echo
    echo "[$STEP] $name"
    printf '    $ %s\n' "$(printf '%q ' "${cmd[@]}" | sed "s#$NODE_CACHE/node_modules/.bin/##")"
    local t0
    t0=$(date +%s%N)
    set +e
    "${cmd[@]}" >"$WORK/$name.json" 2>"$WORK/$name.err"
    RC=$?
    set -e
    echo "    exit $RC in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

# verify <name> <expected exit code> <python body>: the body sees `out` (the parsed JSON envelope)
# and `expect(cond, what, got)`; may print; sets ID etc. by printing `export NAME=value` lines.
verify() {
    local name="$1" want_rc="$2" body="$3" result
    set +e
    result="$(WANT_RC="$want_rc" RC="$RC" python3 - "$WORK/$name.json" "$body" <<'PY'
import json, os, sys

path, body = sys.argv[1], sys.argv[2]
problems = []

def expect(cond, what, got=None):
    if not cond:
        problems.append(f"expected {what}" + ("" if got is None else f"; got {json.dumps(got, ensure_ascii=False)[:400]}"))
    return bool(cond)

rc, want_rc = int(os.environ["RC"]), int(os.environ["WANT_RC"])
expect(rc == want_rc, f"inspector exit code {want_rc}", rc)
raw = open(path).read()
try:
    out = json.loads(raw)
except ValueError as exc:
    print(f"FAIL: expected one JSON object on stdout ({exc}); stdout was: {raw[:400]!r}")
    sys.exit(1)
try:
    exec(body, {"out": out, "expect": expect, "json": json})
except Exception as exc:  # a missing key etc. is a mismatch too
    problems.append(f"expected the response shape the check reads; {type(exc).__name__}: {exc}")
if problems:
    for p in problems:
        print("FAIL: " + p)
    sys.exit(1)
PY
)"
    local status=$?
    set -e
    # Values for later steps are taken even from a failed step, so those steps still run.
    eval "$(echo "$result" | grep '^export ' || true)"
    echo "$result" | grep -v '^export ' | sed 's/^/    /' || true
    if [ "$status" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        echo "    ok"
    else
        FAILED=$((FAILED + 1))
        echo "    --- inspector stdout:"
        head -c 2000 "$WORK/$name.json" | sed 's/^/    | /'
        echo
        echo "    --- stderr:"
        tail -n 20 "$WORK/$name.err" | sed 's/^/    | /'
    fi
}

# 1. tools/list
inspect tools-list --method tools/list
verify tools-list 0 '
tools = out["result"]["tools"]
names = [t.get("name") for t in tools]
for n in ("fetch", "search", "do"):
    expect(n in names, f"tool {n!r} in tools/list", names)
for t in tools:
    n = t.get("name")
    if n in ("fetch", "search", "do"):
        expect(isinstance(t.get("inputSchema"), dict) and t["inputSchema"].get("type") == "object",
               n + ".inputSchema to be a JSON Schema object", t.get("inputSchema"))
        expect(bool(t.get("description")), n + " to have a description")
print("tools: " + ", ".join(names))
'

# 2. do create Contact
NAME="Ada Inspector $$"
inspect do-create --method tools/call --tool-name do \
    --tool-args-json "{\"action\": \"create\", \"type\": \"Contact\", \"data\": {\"name\": \"$NAME\"}}"
verify do-create 0 '
import re
r = out["result"]
expect(r.get("isError") is False, "isError false", r.get("isError"))
sc = r.get("structuredContent") or {}
e = sc.get("entity") or {}
expect(e.get("$type") == "Contact", "entity.$type Contact", e.get("$type"))
expect(e.get("name") == "'"$NAME"'", "entity.name '"$NAME"'", e.get("name"))
expect(isinstance(e.get("$id"), str) and re.fullmatch(r"contact_[0-9A-Za-z]+", e.get("$id") or ""), "entity.$id like contact_…", e.get("$id"))
expect(e.get("$version") == 1, "entity.$version 1", e.get("$version"))
expect(e.get("$createdBy") == "agent_inspector", "entity.$createdBy agent_inspector (the --actor flag)", e.get("$createdBy"))
ev = sc.get("events") or []
expect(len(ev) == 1 and ev[0].get("type") == "Contact.Created" and ev[0].get("target") == e.get("$id"),
       "one Contact.Created event targeting the new id", ev)
text = r["content"][0]["text"]
expect(json.loads(text) == sc, "content[0].text to be the JSON of structuredContent", text[:200])
print("created " + str(e.get("$id")))
print("export CONTACT_ID=" + str(e.get("$id")))
print("export EVENT_ID=" + str(ev[0].get("id") if ev else ""))
'
CONTACT_ID="${CONTACT_ID:-contact_MISSING}"
EVENT_ID="${EVENT_ID:-}"

# 3. fetch it back (a new server process)
inspect fetch --method tools/call --tool-name fetch --tool-arg type=Contact "id=$CONTACT_ID"
verify fetch 0 '
r = out["result"]
expect(r.get("isError") is False, "isError false", r.get("isError"))
e = r.get("structuredContent") or {}
expect(e.get("$id") == "'"$CONTACT_ID"'", "$id '"$CONTACT_ID"'", e.get("$id"))
expect(e.get("$type") == "Contact", "$type Contact", e.get("$type"))
expect(e.get("name") == "'"$NAME"'", "name '"$NAME"'", e.get("name"))
expect(e.get("$version") == 1, "$version 1", e.get("$version"))
expect(e.get("stage") == "Lead", "stage Lead (the schema default)", e.get("stage"))
print("fetched " + str(e.get("$id")) + " v" + str(e.get("$version")))
'

# 4. search Event
inspect search-events --method tools/call --tool-name search --tool-arg type=Event
verify search-events 0 '
r = out["result"]
expect(r.get("isError") is False, "isError false", r.get("isError"))
sc = r.get("structuredContent") or {}
res = sc.get("results") or []
mine = [x for x in res if x.get("target") == "'"$CONTACT_ID"'"]
expect(len(mine) == 1, "exactly one event for '"$CONTACT_ID"'", res)
if mine:
    expect(mine[0].get("type") == "Contact.Created", "its type Contact.Created", mine[0].get("type"))
    expect(mine[0].get("actor") == "agent_inspector", "its actor agent_inspector", mine[0].get("actor"))
    expect(mine[0].get("id") == "'"$EVENT_ID"'", "its id '"$EVENT_ID"' (the one do returned)", mine[0].get("id"))
expect(sc.get("total") == len(res) and sc.get("hasMore") is False, "total == len(results) and hasMore false", {k: sc.get(k) for k in ("total", "hasMore")})
print("events: " + ", ".join(str(x.get("type")) + " " + str(x.get("target")) for x in res))
'

# 5. a missing entity is a tool error, not a protocol error (the Inspector exits 5 on isError:true)
inspect fetch-missing --method tools/call --tool-name fetch --tool-arg type=Contact id=contact_AAAAAAAAAAAA
verify fetch-missing 5 '
r = out["result"]
expect(r.get("isError") is True, "isError true", r.get("isError"))
err = json.loads(r["content"][0]["text"])
expect(err.get("error") == "not_found", "CONTRACT error code not_found", err)
expect(bool(err.get("message")), "an error message", err)
print("error: " + str(err.get("error")) + ": " + str(err.get("message")))
'

ELAPSED=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$START" "$(date +%s.%N)")
echo
echo "inspector: total ${ELAPSED}s"
echo "inspector: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
