import json

import podfleet
import pytest
import report
import rollout
import run_all
from common import BenchError


def test_inventory_keeps_the_token_in_its_file(tmp_path):
    token_file = tmp_path / "registration_token"
    token_file.write_text("SECRET-TOKEN\n")
    inv = rollout.inventory(["rf-bench-n2-01", "rf-bench-n2-02"], "http://127.0.0.1:4000",
                            token_file, tmp_path / "redflag-agent-0.2.0.pyz")
    text = json.dumps(inv)
    assert "SECRET-TOKEN" not in text
    group = inv["all"]["children"]["redflag_agents"]
    assert list(group["hosts"]) == ["rf-bench-n2-01", "rf-bench-n2-02"]
    assert str(token_file) in group["vars"]["redflag_agent_registration_token"]
    assert group["vars"]["ansible_connection"] == "containers.podman.podman"
    assert group["vars"]["redflag_agent_version"] == "0.2.0"
    assert group["vars"]["redflag_agent_artifact"] == str(tmp_path / "redflag-agent-0.2.0.pyz")


def test_ssh_inventory_reaches_each_host_on_its_loopback_port(tmp_path):
    names = ["rf-bench-n2-01", "rf-bench-n2-02"]
    inv = rollout.inventory(names, "http://127.0.0.1:4000", tmp_path / "t", tmp_path / "a",
                            ports={names[0]: 40001, names[1]: 40002}, key=tmp_path / "k")
    group = inv["all"]["children"]["redflag_agents"]
    assert group["hosts"][names[1]] == {"ansible_host": "127.0.0.1", "ansible_port": 40002}
    assert group["vars"]["ansible_connection"] == "ssh"
    assert group["vars"]["ansible_ssh_private_key_file"] == str(tmp_path / "k")


def test_ratios():
    row = {"role_first_s": 30.0, "baseline_first_s": 10.0, "role_rerun_s": 12.0,
           "baseline_rerun_s": 10.0}
    assert rollout.ratios(row) == {"first_ratio": 3.0, "rerun_ratio": 1.2}


def test_podfleet_touches_only_its_own_containers():
    assert podfleet.names_for(3) == ["rf-bench-n3-01", "rf-bench-n3-02", "rf-bench-n3-03"]
    with pytest.raises(BenchError, match="refusing"):
        podfleet.remove(["rf-bench-n1-01", "instance"])


@pytest.mark.parametrize(("limit", "in_use", "containers", "missing"), [
    (128, 26, 20, 18), (128, 26, 10, 0), (1024, 300, 20, 0), (128, 128, 1, 6)])
def test_inotify_shortfall(limit, in_use, containers, missing):
    assert podfleet.inotify_shortfall(limit, in_use, containers) == missing


def test_inotify_instances_are_counted():
    assert podfleet.inotify_instances_in_use() >= 0


ROW = {"n": 5, "serial": "100%", "boot_s": 3.0, "baseline_first_s": 10.0,
       "role_first_s": 15.0, "baseline_rerun_s": 8.0, "role_rerun_s": 16.0,
       "role_first_changed": 50, "role_rerun_changed": 0, "baseline_rerun_changed": 0,
       "role_tasks_per_host": 49.0, "baseline_tasks_per_host": 3.0, "registered": 5,
       "registered_ok": True, "first_ratio": 1.5, "rerun_ratio": 2.0}


def test_markdown_marks_misses_and_says_by_how_much():
    md = report.markdown({"rollout": {"at": "now", "load": "1 1 1", "serial": "100%",
                                      "rows": [ROW]}})
    assert "| 5 | 3.0 | 10.0 | 15.0 | 1.5 yes |" in md
    assert "2.0 **NO**" in md
    assert "target met" in md and "missed by 1.3x (2.00x vs 1.5x)" in md
    assert "Not measured yet" in md and "--only agent" in md and "--only storm" in md
    assert "shared" in md


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "r.png"
    report.plot({"at": "now", "rows": [ROW, dict(ROW, n=10)]}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [["--only", "rollout,bogus"], ["--sizes", "1,x"],
                                  ["--sizes", "0"], ["--jitter", "-1"], ["--cpu-runs", "0"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        run_all.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_arguments_parse():
    a = run_all.parse_args(["--only", "storm,agent", "--sizes", "1,5"])
    assert a.only == ["storm", "agent"] and a.sizes == [1, 5]


def test_render_only_rewrites_results_from_json(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({
        "written": "then", "rollout": {"at": "then", "load": "1 1 1", "serial": "100%",
                                       "transport": "ssh", "rows": [ROW]}}))
    assert run_all.main(["--render-only", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text()
    assert "SSH on 127.0.0.1" in md and "| 5 | 3.0 |" in md
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"


def test_render_only_without_results_says_what_to_do(tmp_path, capsys):
    assert run_all.main(["--render-only", "--out", str(tmp_path)]) == 1
    assert "run the benchmarks first" in capsys.readouterr().err


def test_a_failed_size_is_shown_and_the_others_kept(tmp_path):
    sec = {"at": "now", "load": "1 1 1", "serial": "100%",
           "rows": [ROW, {"n": 20, "error": "podman exec rf-bench-n20-19 ... timed out\nmore"}]}
    md = report.markdown({"rollout": sec})
    assert "| 20 | **failed**: podman exec rf-bench-n20-19 ... timed out |" in md
    assert "| 5 | 3.0 |" in md
    assert "Worst first-converge ratio 1.5x" in md  # from the sizes that ran
    report.plot(sec, tmp_path / "p.png")
    assert (tmp_path / "p.png").exists()
