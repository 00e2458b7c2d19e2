#!/usr/bin/env bash
# Make the Quix Streams peer's venv (default .cache/peers/quix-venv under the repository,
# or $QUIX_VENV): quixstreams==3.28.1 (requirements.in), msgspec and orjson at the versions
# deploy/requirements/runtime.txt pins, and this repository's streamproc with --no-deps.
# Idempotent: a venv that already has all of that is left alone.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
venv="${QUIX_VENV:-$root/.cache/peers/quix-venv}"
python="${PYTHON:-python3}"

pin() {  # the version runtime.txt pins for $1, or nothing
    sed -n "s/^$1==\([^ ]*\).*/\1/p" "$root/deploy/requirements/runtime.txt" 2>/dev/null | head -n1
}
quix="$(sed -n 's/^quixstreams==\([^ ]*\).*/\1/p' "$here/requirements.in")"
msgspec_pin="$(pin msgspec)"
orjson_pin="$(pin orjson)"
extras=()
for spec in "msgspec==$msgspec_pin" "orjson==$orjson_pin"; do
    case "$spec" in *==) extras+=("${spec%==}") ;; *) extras+=("$spec") ;; esac
done

complete() {
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - "$root" "$quix" "$msgspec_pin" "$orjson_pin" <<'PY' 2>/dev/null
import importlib.metadata as md, pathlib, sys
root, quix, msgspec_pin, orjson_pin = sys.argv[1:]
for name, want in (("quixstreams", quix), ("msgspec", msgspec_pin), ("orjson", orjson_pin)):
    if want and md.version(name) != want:
        sys.exit(1)
import streamproc.mapping.record  # the mapping the peer calls, from this repository
import quixstreams  # noqa: F401
if pathlib.Path(streamproc.__file__).resolve().parents[1] != pathlib.Path(root).resolve():
    sys.exit(1)
PY
}

if complete; then
    echo "quix venv complete: $venv (quixstreams==$quix, ${extras[*]}, streamproc from $root)"
    exit 0
fi

run() { echo "+ $*"; "$@"; }
if [ ! -x "$venv/bin/python" ]; then
    run mkdir -p "$(dirname "$venv")"
    run "$python" -m venv "$venv"
fi
run "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.in"
run "$venv/bin/pip" install --quiet --disable-pip-version-check "${extras[@]}"
run "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$root"
if ! complete; then
    echo "setup.sh: $venv is still incomplete after installing" >&2
    exit 1
fi
echo "quix venv ready: $venv"
