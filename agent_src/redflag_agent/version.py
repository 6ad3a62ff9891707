"""Agent version and config schema version: two different things, never compared."""

import contextlib

# galaxy.yml's version, repeated: galaxy.yml is the one source (docs/RELEASING.md);
# build_zipapp.py refuses to build and tests/test_collection.py fails while they differ.
AGENT_VERSION = "0.2.0"
CONFIG_SCHEMA_VERSION = "6"

# a zipapp built with `build_zipapp.py --version V` carries its own stamp
with contextlib.suppress(ImportError):
    from ._build_version import AGENT_VERSION  # type: ignore[no-redef]  # noqa: F401
