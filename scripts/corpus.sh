#!/usr/bin/env bash
# Build (or reuse) the Debian test corpus: v1, v2, v3 and the edge tree,
# cached under $CORPUS_DIR (default /var/tmp/stateless-bench/corpus), with
# ../shared/bench/corpus.sh. The mirrors come from this machine's apt
# sources, deb822 or one-line style.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
script=${SLATE_SHARED:-$here/../shared}/bench/corpus.sh
[ -f "$script" ] || { echo "corpus: $script not found (set SLATE_SHARED to the shared/ folder)" >&2; exit 1; }
uris() {
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true; }
}
: "${MIRROR:=$(uris | grep -E '/debian/?$' | head -1 || true)}"
: "${SECURITY_MIRROR:=$(uris | grep -E 'debian-security/?$' | head -1 || true)}"
: "${MIRROR:=http://deb.debian.org/debian}"
: "${SECURITY_MIRROR:=http://deb.debian.org/debian-security}"
export MIRROR SECURITY_MIRROR
exec bash "$script"
