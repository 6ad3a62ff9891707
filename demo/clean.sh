#!/usr/bin/env bash
# make demo-clean: remove the demo's containers (only those carrying its label), the
# stand-in server process, the test image if the demo built it, and .demo/.
set -euo pipefail
# shellcheck source=demo/lib.sh
. "$(dirname "$0")/lib.sh"

failed=0

if [ -d "$DEMO_DIR" ]; then
    exec 9>"$DEMO_DIR/lock"
    flock -n 9 || die "'make demo' is running" "wait for it to finish, then run 'make demo-clean'"
fi

if command -v podman >/dev/null 2>&1; then
    # Named containers the demo made, plus any other container with its label.
    mapfile -t ours < <(
        { printf '%s\n' "${DEMO_HOSTS[@]}"; podman ps -a --filter "label=$DEMO_LABEL" --format '{{.Names}}'; } \
            | sort -u
    )
    for name in "${ours[@]}"; do
        podman container exists "$name" || continue
        label=$(podman container inspect --format '{{index .Config.Labels "io.redflag.demo"}}' "$name")
        if [ "$label" != "1" ]; then
            echo ">> leaving $name alone: the demo did not create it"
            continue
        fi
        say "removing container $name"
        podman rm -f -t 5 "$name" >/dev/null || { echo "!! could not remove $name" >&2; failed=1; }
    done

    if [ -s "$DEMO_DIR/image-built" ]; then
        read -r image image_id <"$DEMO_DIR/image-built"
        current=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
        if [ -n "$current" ] && [ "$current" = "$image_id" ]; then
            if [ -n "$(podman ps -a --filter "ancestor=$image_id" --format '{{.Names}}')" ]; then
                echo ">> keeping the image $image: other containers still use it (it was built by the demo)"
            else
                say "removing the image $image (the demo built it)"
                podman rmi "$image" >/dev/null || { echo "!! could not remove the image $image" >&2; failed=1; }
            fi
        fi
    fi
fi

if [ -f "$SERVER_DIR/server.json" ]; then
    say "stopping the stand-in server"
    devserver stop --state-dir "$SERVER_DIR" >/dev/null \
        || { echo "!! could not stop the stand-in server (see $SERVER_DIR/server.json for its pid)" >&2; failed=1; }
fi

if [ "$failed" -ne 0 ]; then
    die "some of the demo is left (messages above); .demo/ is kept so a re-run can find it" \
        "fix what is named above, then run 'make demo-clean' again"
fi
if [ -d "$DEMO_DIR" ]; then
    rm -rf "$DEMO_DIR"
    say "removed .demo/"
else
    say "nothing left of the demo"
fi
