#!/usr/bin/env bash
# ansible-test sanity over the collection as it ships: `ansible-galaxy collection build`
# (so galaxy.yml's build_ignore applies), unpacked into a temporary
# ansible_collections/redflag/agent (ansible-test needs a real directory of that name as its
# working directory; the checkout's .collections link does not count), plus this directory's
# ignore files. No --docker, no --requirements (both need the network): the tests whose tool
# is missing are listed by ansible-test as skipped. Extra arguments go to ansible-test, e.g.
#   tests/sanity/run.sh --test validate-modules
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${REDFLAG_VENV_BIN:-$repo/.venv/bin}"
python_version="${REDFLAG_SANITY_PYTHON:-3.11}"
work="$(mktemp -d "${TMPDIR:-/tmp}/redflag-sanity.XXXXXX")"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
"$bin/ansible-galaxy" collection build "$repo" --output-path "$work/dist" >/dev/null
dest="$work/ansible_collections/redflag/agent"
mkdir -p "$dest/tests/sanity"
tar -xzf "$work"/dist/redflag-agent-*.tar.gz -C "$dest"
# build_ignore keeps tests/ out of the artifact; ansible-test reads its ignore files there.
cp "$repo"/tests/sanity/ignore-*.txt "$dest/tests/sanity/" 2>/dev/null || true
cd "$dest"
# ansible-test bootstraps pip into each sanity venv with a script from a host that is not a
# package index; a stand-in (tests/sanity/get_pip.py) takes its cache slot. The sanity venvs'
# pinned requirements then come from the package index, and are cached in ~/.ansible/test.
pip_version="$(sed -n "s/^ *pip='\([0-9.]*\)',$/\1/p" \
  "$("$bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")"
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ -n "$pip_version" ] && [ ! -s "$cache" ]; then
  mkdir -p "$(dirname "$cache")" && cp "$repo/tests/sanity/get_pip.py" "$cache"
fi
# The venv's tools first (ansible-test runs pylint, yamllint, ... by name), and no
# collections path of the checkout: the tree under test is the only redflag.agent.
export PATH="$bin:$PATH"
unset ANSIBLE_CONFIG ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS
set +e
"$bin/ansible-test" sanity --python "$python_version" --color no "$@"
rc=$?
set -e
echo "sanity: ansible-test sanity exited $rc in $(( $(date +%s) - start )) s"
exit "$rc"
