# Shared by demo.sh and clean.sh (sourced, not run). Works from `make` and when the
# scripts are run directly: every setting the Makefile exports is set here if unset.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR="$REPO/.demo"
SERVER_DIR="$DEMO_DIR/server"
TOKEN_FILE="$SERVER_DIR/registration_token"
DEMO_HOSTS=(rf-demo-fresh rf-demo-legacy rf-demo-notoken)
# Every container the demo starts carries this label; clean.sh removes only those.
DEMO_LABEL="io.redflag.demo=1"
DEFAULT_IMAGE="localhost/redflag-debian12-systemd:latest"
IMAGE="${REDFLAG_DEMO_IMAGE:-$DEFAULT_IMAGE}"

if [ -x "$REPO/.venv/bin/python" ]; then
    case ":$PATH:" in
        *":$REPO/.venv/bin:"*) ;;
        *) PATH="$REPO/.venv/bin:$PATH" ;;
    esac
fi
export PATH
: "${CONTAINERS_CONF:=$REPO/molecule/containers.conf}"
: "${ANSIBLE_CONFIG:=$REPO/ansible.cfg}"
export CONTAINERS_CONF ANSIBLE_CONFIG
PY="python3"
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"

say() { printf '>> %s\n' "$*"; }
# die MESSAGE NEXT-STEP: what went wrong, then the one thing to do next.
die() {
    printf '!! %s\n' "$1" >&2
    [ -n "${2:-}" ] && printf '!! next: %s\n' "$2" >&2
    exit 1
}

# fd 9 holds the demo's lock; podman's conmon and the server would inherit it and keep
# the lock long after this script ends, so no child gets it.
podman() { command podman "$@" 9>&-; }
devserver() { "$PY" "$REPO/molecule/shared/devserver.py" "$@" 9>&-; }
