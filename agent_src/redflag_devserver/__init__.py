"""Stand-in for the RedFlag aggregator server, for tests, Molecule and demos.

A development stand-in only: standard library HTTP + SQLite speaking the endpoints the agent
uses. It shares no code with the agent on purpose, so tests against it check a real contract.
"""
