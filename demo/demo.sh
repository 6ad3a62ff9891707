#!/usr/bin/env bash
# make demo: a stand-in server on 127.0.0.1 and three systemd containers (a fresh host, an
# agent 0.1.18 install, a host without a token), rolled out by playbooks/site.yml, then the
# fleet status, the server's view and a short summary. Re-runnable: state stays in .demo/
# (mode 0700) until `make demo-clean`.
set -euo pipefail
# shellcheck source=demo/lib.sh
. "$(dirname "$0")/lib.sh"

umask 077
started=$(date +%s)
FACTS="$DEMO_DIR/facts"
LOGS="$DEMO_DIR/logs"
LEGACY_PREP="$DEMO_DIR/legacy"
INVENTORY="$DEMO_DIR/inventory.yml"

# -- prerequisites ----------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "the demo runs systemd containers with podman as root" \
    "run it as root: sudo make demo"
command -v podman >/dev/null 2>&1 || die "podman is not installed" \
    "run 'make demo' (it installs podman, runc and debootstrap) or: apt-get install podman runc"
command -v ansible-playbook >/dev/null 2>&1 || die "ansible-playbook not found on PATH" \
    "run 'make venv' (or 'make demo', which creates .venv first)"
podman info >/dev/null 2>&1 || die "podman does not work here (podman info failed)" \
    "run 'CONTAINERS_CONF=$CONTAINERS_CONF podman info' and fix what it reports"

mkdir -p "$DEMO_DIR"
chmod 0700 "$DEMO_DIR"
mkdir -p "$FACTS" "$LOGS" "$LEGACY_PREP/devserver"
exec 9>"$DEMO_DIR/lock"
flock -n 9 || die "another 'make demo' or 'make demo-clean' is running" "wait for it to finish"

# -- image ------------------------------------------------------------------------------
if ! podman image exists "$IMAGE"; then
    case "$IMAGE" in
        *redflag-debian12-systemd*)
            say "building the test image $IMAGE (debootstrap, about a minute)"
            REDFLAG_DEBIAN_IMAGE="$IMAGE" bash "$REPO/molecule/images/build-debian.sh" \
                || die "building $IMAGE failed (output above)" "fix what build-debian.sh reports, then re-run"
            ;;
        *redflag-fedora41-systemd*)
            say "building the test image $IMAGE from molecule/images/Containerfile.fedora"
            podman build -f "$REPO/molecule/images/Containerfile.fedora" -t "$IMAGE" \
                "$REPO/molecule/images" || die "building $IMAGE failed (output above)" \
                "check that the Fedora base image can be pulled here, or unset REDFLAG_DEMO_IMAGE"
            ;;
        *)
            die "image $IMAGE does not exist locally" "run 'podman pull $IMAGE' or unset REDFLAG_DEMO_IMAGE"
            ;;
    esac
    # Only an image the demo built is removed by demo-clean.
    printf '%s %s\n' "$IMAGE" "$(podman image inspect --format '{{.Id}}' "$IMAGE")" \
        >"$DEMO_DIR/image-built"
fi

# -- stand-in server --------------------------------------------------------------------
say "starting the stand-in server on 127.0.0.1 (state in .demo/server)"
server_json=$(devserver start --state-dir "$SERVER_DIR") \
    || die "the stand-in server did not start (reason above)" "read $SERVER_DIR/devserver.log"
SERVER_URL=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)["url"])' <<<"$server_json")
SERVER_DB="$SERVER_DIR/devserver.db"
say "server: $SERVER_URL"

# -- containers -------------------------------------------------------------------------
new_fresh=0
for name in "${DEMO_HOSTS[@]}"; do
    if podman container exists "$name"; then
        label=$(podman container inspect --format '{{index .Config.Labels "io.redflag.demo"}}' "$name")
        [ "$label" = "1" ] || die "a container named $name exists but the demo did not make it" \
            "remove or rename it (podman rm -f $name), then re-run"
        if [ "$(podman container inspect --format '{{.State.Running}}' "$name")" != "true" ]; then
            say "starting the stopped container $name"
            podman start "$name" >/dev/null || die "podman start $name failed" \
                "run 'make demo-clean', then 'make demo'"
        fi
    else
        say "creating container $name ($IMAGE)"
        podman run -d --name "$name" --hostname "$name" --label "$DEMO_LABEL" \
            --systemd=always --network host "$IMAGE" /sbin/init >/dev/null \
            || die "podman run $name failed (output above)" \
            "run 'CONTAINERS_CONF=$CONTAINERS_CONF podman run --rm $IMAGE true' to see why"
        [ "$name" = rf-demo-fresh ] && new_fresh=1
    fi
done
for name in "${DEMO_HOSTS[@]}"; do
    t0=$(date +%s)
    printf '>> waiting for systemd in %s ... ' "$name"
    state=$(timeout 120 podman exec "$name" systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in
        running|degraded) printf '%s (%ss)\n' "$state" "$(( $(date +%s) - t0 ))" ;;
        *) printf '%s\n' "${state:-no answer}"
           die "systemd did not boot in $name within 120 s" \
               "run 'podman logs $name' to see why, then 'make demo-clean' and 'make demo'" ;;
    esac
done

# -- registration token (minted once; again only when the fresh host is new) -------------
if [ ! -s "$TOKEN_FILE" ] || [ "$new_fresh" -eq 1 ]; then
    say "minting a registration token (2 seats, 24 h; kept in .demo/server, mode 0600)"
    devserver mint --state-dir "$SERVER_DIR" --out registration_token --seats 2 >/dev/null \
        || die "minting the registration token failed (reason above)" "read $SERVER_DIR/devserver.log"
fi

# -- the 0.1.18 legacy install (once per container) -----------------------------------------
legacy_id=$(podman container inspect --format '{{.Id}}' rf-demo-legacy)
if [ "$(cat "$LEGACY_PREP/prepared" 2>/dev/null || true)" != "$legacy_id" ]; then
    say "laying down an agent 0.1.18 install on rf-demo-legacy, registered with the server"
    # molecule/legacy/prepare.yml is the one definition of a 0.1.18 install; it reads the
    # server settings from <molecule_ephemeral_directory>/devserver/server_vars.yml.
    "$PY" - "$LEGACY_PREP/devserver/server_vars.yml" "$SERVER_URL" "$SERVER_DIR" <<'EOF'
import json, os, sys
path, url, state = sys.argv[1:]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    fh.write("---\nrf_server_url: %s\nrf_state_dir: %s\n" % (json.dumps(url), json.dumps(state)))
EOF
    # prepare.yml names each host by ansible_host (the container, whose hostname it is).
    printf -- '---\nall:\n  hosts:\n    rf-demo-legacy:\n      ansible_host: rf-demo-legacy\n      ansible_connection: containers.podman.podman\n      ansible_python_interpreter: /usr/bin/python3\n' \
        >"$LEGACY_PREP/inventory.yml"
    MOLECULE_PROJECT_DIRECTORY="$REPO" ansible-playbook -i "$LEGACY_PREP/inventory.yml" \
        -e "molecule_ephemeral_directory=$LEGACY_PREP" "$REPO/molecule/legacy/prepare.yml" \
        >"$LOGS/prepare-legacy.log" 2>&1 || {
        tail -n 25 "$LOGS/prepare-legacy.log" >&2
        die "preparing the legacy install failed (log: .demo/logs/prepare-legacy.log)" \
            "run 'make demo-clean', then 'make demo'; if it fails again, report the log above"
    }
    printf '%s\n' "$legacy_id" >"$LEGACY_PREP/prepared"
fi

# -- inventory --------------------------------------------------------------------------
"$PY" "$REPO/demo/fleet.py" inventory --out "$INVENTORY" --server-url "$SERVER_URL" \
    --token-file "$TOKEN_FILE" \
    --host rf-demo-fresh:token --host rf-demo-legacy:token --host rf-demo-notoken

# -- rollout ----------------------------------------------------------------------------
# A re-run must change nothing when nothing it depends on changed: the same containers,
# the same server URL (a restarted server gets a new port) and the same agent source.
fingerprint=$(
    printf 'containers %s\n' "$(for name in "${DEMO_HOSTS[@]}"; do
        podman container inspect --format '{{.Id}}' "$name"; done | cut -c1-12 | tr '\n' ' ')"
    printf 'server_url %s\n' "$SERVER_URL"
    printf 'agent_source %s\n' "$(cd "$REPO/agent_src" && find redflag_agent -type f -name '*.py' \
        | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
)
rerun=0
differs=""
if [ -s "$DEMO_DIR/rolled-out" ]; then
    while read -r key _value; do
        grep -qxF "$(grep "^$key " <<<"$fingerprint")" "$DEMO_DIR/rolled-out" || differs="$differs $key"
    done <<<"$fingerprint"
    [ -z "$differs" ] && rerun=1
fi
run_no=$(( $(cat "$DEMO_DIR/runs" 2>/dev/null || echo 0) + 1 ))
printf '%s\n' "$run_no" >"$DEMO_DIR/runs"
site_log="$LOGS/site-$run_no.log"

say "rolling out with playbooks/site.yml (all three hosts in one batch; log .demo/logs/site-$run_no.log)"
# The demo fleet is one batch; a real fleet keeps site.yml's default serial (20%).
if ! ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-$([ -t 1 ] && echo 1 || echo 0)}" \
    ansible-playbook -i "$INVENTORY" "$REPO/playbooks/site.yml" -e redflag_rollout_serial=3 \
    2>&1 | tee "$site_log"; then
    bad=$("$PY" "$REPO/demo/fleet.py" culprits "$site_log" || true)
    first=${bad%% *}
    if [ -n "$first" ]; then
        die "site.yml failed on: $bad (the health gate's message above says why; log: .demo/logs/site-$run_no.log)" \
            "see why the agent did not come up: podman exec $first journalctl -u redflag-agent -n 40 --no-pager"
    fi
    die "site.yml failed (the failed task and its message are above; log: .demo/logs/site-$run_no.log)" \
        "fix what the failed task names, then re-run 'make demo'"
fi

rerun_text=""
rerun_ok=1
if [ "$rerun" -eq 1 ]; then
    rerun_text=$("$PY" "$REPO/demo/fleet.py" rerun "$site_log" "${DEMO_HOSTS[@]}") || rerun_ok=0
elif [ -n "$differs" ]; then
    rerun_text="changed since the last rollout:$differs; so changes were expected (run 'make demo' again: it must change nothing)"
else
    rerun_text="first rollout: changes expected (run 'make demo' again: it must change nothing)"
fi
printf '%s\n' "$fingerprint" >"$DEMO_DIR/rolled-out"

# -- status: the agents' own view, then the server's --------------------------------------
say "fleet status (playbooks/status.yml)"
ANSIBLE_FORCE_COLOR=0 ANSIBLE_CALLBACK_RESULT_FORMAT=yaml \
    ansible-playbook -i "$INVENTORY" "$REPO/playbooks/status.yml" \
    >"$LOGS/status-$run_no.log" 2>&1 || {
    tail -n 25 "$LOGS/status-$run_no.log" >&2
    die "status.yml failed (log: .demo/logs/status-$run_no.log)" "read the failed task above"
}
"$PY" "$REPO/demo/fleet.py" table "$LOGS/status-$run_no.log" \
    || die "status.yml printed no fleet table (log: .demo/logs/status-$run_no.log)" \
    "read the log; the last task of playbooks/status.yml prints the table"

say "the server's view (python3 -m redflag_devserver agents)"
PYTHONPATH="$REPO/agent_src" "$PY" -m redflag_devserver agents --db "$SERVER_DB" | sed 's/^/  /'

# Facts for the summary: each agent's status --json, its unit, the server's list.
rm -f "$FACTS"/*
PYTHONPATH="$REPO/agent_src" "$PY" -m redflag_devserver agents --db "$SERVER_DB" --json \
    >"$FACTS/agents.json"
cp "$LEGACY_PREP/legacy_identity.json" "$FACTS/legacy_identity.json"
: >"$FACTS/rf-demo-fresh.token"
: >"$FACTS/rf-demo-legacy.token"
for name in "${DEMO_HOSTS[@]}"; do
    podman exec "$name" python3 -I /opt/redflag-agent/current/redflag-agent.pyz status --json \
        >"$FACTS/$name.status.json" 2>/dev/null || true
    podman exec "$name" systemctl show redflag-agent.service \
        -p ActiveState -p SubState -p ExecMainStatus >"$FACTS/$name.unit" 2>/dev/null || true
done

# The demo's own check that no secret reached its logs (and so its output, which they copy).
for secret_file in "$TOKEN_FILE" "$SERVER_DIR/legacy_seed_token"; do
    if [ -s "$secret_file" ] && grep -rqF -f "$secret_file" "$LOGS"; then
        die "a registration token appears in .demo/logs; it must never be logged" \
            "run 'grep -rlF -f $secret_file .demo/logs' to find where, and report it"
    fi
done
if grep -rqE 'eyJ[A-Za-z0-9_-]{8,}\.eyJ' "$LOGS"; then
    die "an access token (JWT) appears in .demo/logs; it must never be logged" \
        "run \"grep -rlE 'eyJ[A-Za-z0-9_-]{8,}\\.eyJ' .demo/logs\" to find where, and report it"
fi

echo
say "summary"
summary_ok=1
"$PY" "$REPO/demo/fleet.py" summary --facts "$FACTS" "${DEMO_HOSTS[@]}" || summary_ok=0
echo "  $rerun_text"
echo "  took $(( $(date +%s) - started )) s; the server stays up until 'make demo-clean'"

if [ "$summary_ok" -ne 1 ]; then
    die "the fleet is not in the state the demo expects (see the summary above)" \
        "read .demo/logs/site-$run_no.log for the host named above"
fi
if [ "$rerun_ok" -ne 1 ]; then
    die "the second run changed something; it must not (see .demo/logs/site-$run_no.log)" \
        "search the log for 'changed:' to find the task that is not idempotent"
fi
