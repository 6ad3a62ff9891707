import agent_part
import pytest

SAMPLE = """Agent benchmarks: Python 3.11.7, zipapp, median of 9 runs

| measure | median | target | ok |
|---|---:|---:|---|
| start to first check-in request (ms) | 157.7 | <= 150 | NO |
| legacy migration via `migrate` (ms) | 77.8 | <= 100 | yes |
| idle RSS after first check-in (MiB) | 23.4 | <= 25 | yes |
"""


def test_parse_agent_bench_rows():
    rows = agent_part.parse_agent_bench(SAMPLE)
    assert [r["measure"] for r in rows] == [
        "start to first check-in request (ms)", "legacy migration via `migrate` (ms)",
        "idle RSS after first check-in (MiB)"]
    assert [(r["median"], r["target"], r["ok"]) for r in rows] == [
        (157.7, 150.0, False), (77.8, 100.0, True), (23.4, 25.0, True)]


def test_parse_agent_bench_ignores_garbage():
    assert agent_part.parse_agent_bench("| a | b | c | d |\nTraceback\n") == []


@pytest.mark.parametrize(("comm", "ticks", "expected"), [
    ("python3", 100, 1.25),
    ("we ird) (name", 100, 1.25),
    ("x", 250, 0.5),
])
def test_cpu_seconds_reads_utime_plus_stime(comm, ticks, expected):
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime ...
    line = f"4242 ({comm}) S 1 4242 4242 0 -1 4194560 900 0 0 0 100 25 7 3 20 0 1 0 55\n"
    assert agent_part.cpu_seconds(line, ticks) == pytest.approx(expected)
