#!/usr/bin/env bash
# Creates (or reuses) the Python venv that bench/monai_chain.py runs in and prints its python's path on
# stdout; everything else goes to stderr.
#   bench/setup-monai.sh [VENV]      default VENV: $WF_MONAI_VENV, else ~/.cache/wf-monai-venv
# The pins are those of the MONAI parity data (imaging/tests/data/monai-1.6.1/requirements.txt):
# monai 1.6.1, torch 2.15.0, nibabel 5.4.2, numpy 2.4.6 and scipy 1.17.1, so the benchmarks time the same
# MONAI that the parity tests compare against. A venv that already has exactly these versions is reused without
# touching the network. torch's default wheel pulls CUDA libraries (several GB, minutes to install);
# the benchmark runs it on the CPU.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
req=$(cd "$here/.." && pwd)/imaging/tests/data/monai-1.6.1/requirements.txt
venv=${1:-${WF_MONAI_VENV:-$HOME/.cache/wf-monai-venv}}
die() { echo "setup-monai.sh: $*" >&2; exit 1; }

[ -f "$req" ] || die "missing $req"
# name==version pins from the requirements file, e.g. "monai==1.6.1 torch==2.15.0 ..."
pins=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$req" | grep '==' | tr '\n' ' ' | sed 's/ $//')
[ -n "$pins" ] || die "no name==version pins in $req"

# True when VENV's python has every pinned version installed (package metadata only: no torch import).
have_pins() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - $pins <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if ! have_pins; then
  if [ ! -x "$venv/bin/python" ]; then
    command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH (needed to create $venv)"
    python3 -m venv "$venv" >/dev/null 2>&1 \
      || die "'python3 -m venv $venv' failed (is the venv module installed, e.g. python3-venv?)"
  fi
  log=$(mktemp "${TMPDIR:-/tmp}/wf-setup-monai.XXXXXX.log")
  echo "setup-monai.sh: installing $pins into $venv (several GB; log: $log)" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -r "$req" >"$log" 2>&1 \
    || die "pip install -r $req into $venv failed (last line: $(tail -n 1 "$log"); full log: $log)"
  have_pins || die "installed, but $venv still lacks one of: $pins (log: $log)"
  rm -f "$log"
fi
echo "$venv/bin/python"
