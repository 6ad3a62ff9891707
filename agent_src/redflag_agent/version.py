"""Agent version and config schema version: two different things, never compared."""

AGENT_VERSION = "0.2.0"
CONFIG_SCHEMA_VERSION = "6"
