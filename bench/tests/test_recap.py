import pytest
import recap

OUT = """
PLAY [one] *****

PLAY RECAP *********************************************************************
old-host                   : ok=1    changed=1    unreachable=0    failed=0

PLAY [two] *****
TASK [x] ***
ok: [rf-bench-n2-01]

PLAY RECAP *********************************************************************
{h1}
{h2}

Saturday 28 November 2026  22:05:25 +0000 (0:00:00.045)       0:01:07.984 *****
""".format(  # ansible pads the recap lines with trailing blanks
    h1="rf-bench-n2-01             : ok=49   changed=10   unreachable=0    failed=0    "
       "skipped=22   rescued=0    ignored=0   ",
    h2="rf-bench-n2-02             : ok=47   changed=0    unreachable=1    failed=2    "
       "skipped=20   rescued=1    ignored=3   ")


def test_parses_the_last_recap_only():
    hosts = recap.parse(OUT)
    assert set(hosts) == {"rf-bench-n2-01", "rf-bench-n2-02"}
    assert hosts["rf-bench-n2-01"] == {"ok": 49, "changed": 10, "unreachable": 0, "failed": 0,
                                       "skipped": 22, "rescued": 0, "ignored": 0}
    assert hosts["rf-bench-n2-02"]["ignored"] == 3


def test_totals_sum_every_host():
    tot = recap.totals(recap.parse(OUT))
    assert (tot["ok"], tot["changed"], tot["unreachable"], tot["failed"]) == (96, 10, 1, 2)


@pytest.mark.parametrize("text", ["", "PLAY [x]\nfatal: [h]: FAILED!\n", "ERROR! no such file"])
def test_no_recap_gives_nothing(text):
    assert recap.parse(text) == {}
    assert recap.totals({})["changed"] == 0


def test_old_recap_without_skipped_columns_defaults_to_zero():
    hosts = recap.parse("PLAY RECAP ***\nh : ok=3 changed=1 unreachable=0 failed=0\n")
    assert hosts["h"]["skipped"] == 0 and hosts["h"]["changed"] == 1


PROFILE = """
PLAY RECAP ***
h : ok=1 changed=0 unreachable=0 failed=0

TASKS RECAP ********************************************************************
Saturday 28 November 2026  22:05:25 +0000 (0:00:00.045)       0:01:07.984 *****
===============================================================================
redflag_agent : Create the agent directories ---------------------------- 9.15s
Copy the agent zipapp --------------------------------------------------- 0.75s
redflag_agent : Start the service (registered, or a token was just embedded) --- 14.15s
"""


def test_task_times_slowest_first():
    assert recap.task_times(PROFILE) == [
        ("redflag_agent : Start the service (registered, or a token was just embedded)", 14.15),
        ("redflag_agent : Create the agent directories", 9.15),
        ("Copy the agent zipapp", 0.75),
    ]
    assert recap.task_times(OUT) == []
