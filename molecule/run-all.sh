#!/usr/bin/env bash
# Run every Molecule scenario (or the ones named as arguments) one after another,
# print each one's wall time, and exit non-zero when any failed.
#   molecule/run-all.sh                 # all scenarios
#   molecule/run-all.sh default fleet   # some
# Environment: REDFLAG_MOLECULE_IMAGE (default: the local Debian 12 image, built when
# missing), CONTAINERS_CONF (default: molecule/containers.conf).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1

export PATH="$repo/.venv/bin:$PATH"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/molecule/containers.conf}"
export REDFLAG_MOLECULE_IMAGE="${REDFLAG_MOLECULE_IMAGE:-localhost/redflag-debian12-systemd:latest}"
export PY_COLORS="${PY_COLORS:-0}" ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"

if ! command -v molecule >/dev/null 2>&1; then
    echo "run-all: molecule not found; create the virtual environment first: make venv" >&2
    exit 1
fi

case "$REDFLAG_MOLECULE_IMAGE" in
    *redflag-debian12-systemd*)
        REDFLAG_DEBIAN_IMAGE="$REDFLAG_MOLECULE_IMAGE" bash molecule/images/build-debian.sh || exit 1 ;;
esac

if [ "$#" -gt 0 ]; then
    scenarios=("$@")
else
    # Fixed order: quick single-host scenarios first, the fleet last.
    scenarios=(default legacy unregistered upgrade absent check fleet canary clones takeover image collection)
    for dir in molecule/*/; do
        name=$(basename "$dir")
        [ -f "$dir/molecule.yml" ] || continue
        case " ${scenarios[*]} " in *" $name "*) ;; *) scenarios+=("$name") ;; esac
    done
fi

echo "run-all: image $REDFLAG_MOLECULE_IMAGE; scenarios: ${scenarios[*]}"
results=()
failed=0
start_all=$(date +%s)
for name in "${scenarios[@]}"; do
    if [ ! -f "molecule/$name/molecule.yml" ]; then
        echo "run-all: no scenario '$name' (no molecule/$name/molecule.yml)" >&2
        results+=("$(printf '%-14s %6s  %s' "$name" "-" "MISSING")")
        failed=1
        continue
    fi
    echo "==== molecule test -s $name"
    t0=$(date +%s)
    if molecule test -s "$name"; then
        verdict=passed
    else
        verdict=FAILED
        failed=1
    fi
    secs=$(( $(date +%s) - t0 ))
    results+=("$(printf '%-14s %5ds  %s' "$name" "$secs" "$verdict")")
    echo "==== $name: $verdict in ${secs}s"
done

echo
echo "run-all: scenario wall times"
printf '  %s\n' "${results[@]}"
echo "  total          $(( $(date +%s) - start_all ))s"
if [ "$failed" -ne 0 ]; then
    echo "run-all: some scenarios failed; rerun one with: molecule/run-all.sh NAME (logs above)" >&2
fi
exit "$failed"
