"""The report writer: rows fold per case, sections of other suites survive a rewrite."""

from __future__ import annotations

from .reliability import Recorder, Row, merge_document, render_section, write_report


def test_rows_fold_and_results_count():
    rec = Recorder()
    a = rec.row("kill", "done", "checked")
    assert rec.row("kill", "other", "other") is a
    rec.outcome(a, True)
    rec.outcome(a, False)
    a.notes += ["n1", "n1", "n2"]
    assert a.result == "FAIL (1/2): n1; n2"
    b = Row("one", "d", "c", passed=1)
    assert b.result == "pass"


def test_cells_are_escaped_and_sections_merge(tmp_path):
    unit = render_section("unit", "Unit", [Row("a|b", "x\ny", "c", passed=1)], when="T")
    assert "| a\\|b | x y | c | pass |" in unit
    systemd = render_section("systemd", "Systemd", [Row("s", "d", "c", failed=1)], when="T")
    doc = merge_document(merge_document("", "systemd", systemd, ("unit", "systemd")), "unit",
                         unit, ("unit", "systemd"))
    assert doc.index("## Unit") < doc.index("## Systemd") and "FAIL" in doc
    newer = render_section("unit", "Unit", [], when="T2")
    again = merge_document(doc, "unit", newer, ("unit", "systemd"))
    assert "(no case ran)" in again and "a\\|b" not in again and "## Systemd" in again
    target = tmp_path / "R.md"
    write_report(target, "unit", "Unit", [Row("a", "d", "c", passed=1)])
    write_report(target, "systemd", "Systemd", [Row("s", "d", "c", passed=1)])
    text = target.read_text()
    assert text.count("<!-- suite:unit:begin -->") == 1 and "## Systemd" in text
