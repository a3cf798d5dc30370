#!/usr/bin/env bash
# The AWS emulator of the cloud tests: tests/cloud/emulator.py (moto, completed for wf) on 127.0.0.1.
#
# In a shell (what .ci/run does):
#   source tests/cloud/emulator.sh; emulator_start      # exports the variables below; stops on EXIT
#   ... ; emulator_stop
# From a test harness:
#   tests/cloud/emulator.sh serve     # prints one line, MOTO_ENDPOINT=http://127.0.0.1:PORT, once the
#                                     # emulator answers, and runs until its standard input closes
#   tests/cloud/emulator.sh install   # only creates or refreshes the virtual environment
#
# The first use creates a virtual environment with tests/cloud/requirements.txt (about a minute; it
# is reused while the requirements are unchanged). Whatever keeps it from starting (no python3, an
# old one, no venv module, pip unable to install) is reported as one line `emulator: <what>` on
# stderr and a non-zero status; nothing waits forever.
#
# Env in:  WF_EMULATOR_VENV   the virtual environment (default <repo>/.cache/emulator-venv)
#          WF_EMULATOR_PYTHON the Python that creates it (default python3; 3.11 or newer)
# Env out (emulator_start): MOTO_ENDPOINT, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#          AWS_REGION, AWS_DEFAULT_REGION (us-east-1), AWS_EC2_METADATA_DISABLED=true,
#          WF_EMULATOR=jobs (this emulator runs `local:` job images), EMULATOR_PID, EMULATOR_LOG.

_emu_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_emu_repo=$(cd "$_emu_dir/../.." && pwd)
_emu_start_seconds=60 # from launch until the emulator must answer

_emu_say() { echo "emulator: $*" >&2; }

_emu_venv() { echo "${WF_EMULATOR_VENV:-$_emu_repo/.cache/emulator-venv}"; }

_emu_installed() {
  local venv
  venv=$(_emu_venv)
  [ -x "$venv/bin/python" ] && [ -f "$venv/.wf-requirements.txt" ] &&
    [ "$(cat "$venv/.wf-requirements.txt")" = "$(cat "$_emu_dir/requirements.txt")" ]
}

_emu_install_locked() {
  local venv python out
  venv=$(_emu_venv)
  python=${WF_EMULATOR_PYTHON:-python3}
  _emu_installed && return 0 # another installer finished while this one waited for the lock
  if ! command -v "$python" >/dev/null 2>&1; then
    _emu_say "$python is not installed (the AWS emulator, moto, needs Python 3.11 or newer)"
    return 1
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    _emu_say "$python is $("$python" -V 2>&1); the AWS emulator's pinned packages need Python 3.11 or newer (set WF_EMULATOR_PYTHON)"
    return 1
  fi
  rm -rf "$venv"
  if ! out=$("$python" -m venv "$venv" 2>&1); then
    rm -rf "$venv"
    _emu_say "$python cannot create a virtual environment (on Debian/Ubuntu: install python3-venv): $(echo "$out" | tail -n 1)"
    return 1
  fi
  if ! out=$("$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    -r "$_emu_dir/requirements.txt" 2>&1); then
    rm -rf "$venv"
    _emu_say "pip could not install tests/cloud/requirements.txt (is PyPI reachable?): $(echo "$out" | grep -E 'ERROR|Error' | tail -n 1)"
    return 1
  fi
  cp "$_emu_dir/requirements.txt" "$venv/.wf-requirements.txt"
}

# Creates or refreshes the virtual environment; one installer at a time (flock, where there is one).
emulator_install() {
  local venv
  venv=$(_emu_venv)
  _emu_installed && return 0
  mkdir -p "$(dirname "$venv")" || {
    _emu_say "cannot create $(dirname "$venv")"
    return 1
  }
  (
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    _emu_install_locked
  ) 9>"$venv.lock"
}

# Waits until the emulator of pid $1 (port file $2) answers; prints its port.
_emu_wait_ready() {
  local pid=$1 port_file=$2 port="" tries=$((_emu_start_seconds * 5))
  while [ "$tries" -gt 0 ]; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ -z "$port" ] && [ -s "$port_file" ] && port=$(cat "$port_file")
    if [ -n "$port" ] && "$(_emu_venv)/bin/python" -c '
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/moto-api/data.json" % sys.argv[1], timeout=2).read()
' "$port" >/dev/null 2>&1; then
      echo "$port"
      return 0
    fi
    sleep 0.2
    tries=$((tries - 1))
  done
  return 1
}

_emu_why_not_ready() {
  local log=$1
  _emu_say "the emulator did not answer within ${_emu_start_seconds}s: $(grep -v '^\s*$' "$log" 2>/dev/null | tail -n 1) (log: $log)"
}

# Runs the emulator until standard input closes: the harness holds the other end of the pipe, so
# the emulator ends with it, however it ends.
emulator_serve() {
  emulator_install || return 1
  local log port_file pid port status
  log=$(mktemp "${TMPDIR:-/tmp}/wf-emulator.XXXXXX") || return 1
  port_file="$log.port"
  "$(_emu_venv)/bin/python" "$_emu_dir/emulator.py" --exit-with-stdin --port-file "$port_file" \
    <&0 >"$log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null' TERM INT HUP
  if ! port=$(_emu_wait_ready "$pid" "$port_file"); then
    kill "$pid" 2>/dev/null
    _emu_why_not_ready "$log"
    return 1
  fi
  echo "MOTO_ENDPOINT=http://127.0.0.1:$port"
  _emu_say "ready on http://127.0.0.1:$port (log: $log)"
  wait "$pid"
  status=$?
  rm -f "$port_file"
  [ -n "${WF_EMULATOR_KEEP_LOG:-}" ] || rm -f "$log"
  return "$status"
}

# Starts the emulator in the background of this shell and exports its settings. The emulator
# reads a pipe that this shell holds open, so it also ends when the shell dies without running
# its EXIT trap.
emulator_start() {
  emulator_install || return 1
  local port_file port
  EMULATOR_LOG=$(mktemp "${TMPDIR:-/tmp}/wf-emulator.XXXXXX") || return 1
  port_file="$EMULATOR_LOG.port"
  exec {_emu_fd}> >(exec "$(_emu_venv)/bin/python" "$_emu_dir/emulator.py" --exit-with-stdin \
    --port-file "$port_file" >"$EMULATOR_LOG" 2>&1)
  EMULATOR_PID=$!
  trap emulator_stop EXIT
  if ! port=$(_emu_wait_ready "$EMULATOR_PID" "$port_file"); then
    _emu_why_not_ready "$EMULATOR_LOG"
    emulator_stop
    return 1
  fi
  rm -f "$port_file"
  export EMULATOR_PID EMULATOR_LOG MOTO_ENDPOINT="http://127.0.0.1:$port"
  export AWS_ENDPOINT_URL=$MOTO_ENDPOINT AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true WF_EMULATOR=jobs
}

# Wipes the emulator's state (buckets, state machines, jobs, ...).
emulator_reset() {
  "$(_emu_venv)/bin/python" -c '
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/moto-api/reset", method="POST"), timeout=10)
' "$MOTO_ENDPOINT"
}

# Safe under `set -e` and as an EXIT trap: it never fails.
emulator_stop() {
  if [ -n "${_emu_fd:-}" ]; then
    exec {_emu_fd}>&- # end of file on the emulator's stdin: it stops
    _emu_fd=
  fi
  if [ -n "${EMULATOR_PID:-}" ]; then
    local tries=50
    while kill -0 "$EMULATOR_PID" 2>/dev/null && [ "$tries" -gt 0 ]; do
      sleep 0.1
      tries=$((tries - 1))
    done
    kill "$EMULATOR_PID" 2>/dev/null || true
    EMULATOR_PID=
  fi
  if [ -n "${EMULATOR_LOG:-}" ] && [ -z "${WF_EMULATOR_KEEP_LOG:-}" ]; then
    rm -f "$EMULATOR_LOG" "$EMULATOR_LOG.port"
  fi
  unset MOTO_ENDPOINT AWS_ENDPOINT_URL WF_EMULATOR
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    serve) emulator_serve ;;
    install) emulator_install ;;
    *)
      echo "usage: $0 serve|install   (or: source $0; emulator_start)" >&2
      exit 2
      ;;
  esac
fi
