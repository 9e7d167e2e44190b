"""Tests of common/launch/hvd_launch.py's stderr relay: the launcher's report of a failed process is
held to the job's end, then dropped after a clean stop or a user error, shown otherwise."""

from __future__ import annotations

import io

from common.launch import hvd_launch

RULE = "-" * 74
OPEN_MPI = f"""error: --epochs must be at least 1, got 0
{RULE}
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
{RULE}
{RULE}
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[31872,1],1]
  Exit code:    2
{RULE}
"""


def relayed(text: str, show_reports: bool) -> tuple[str, str]:
    relay = hvd_launch._StderrRelay("horovodrun")
    relay.out = io.BytesIO()
    relay.copy(io.BytesIO(text.encode()))
    before_end = relay.out.getvalue().decode()
    relay.end(show_reports)
    return before_end, relay.out.getvalue().decode()


def test_open_mpis_report_is_held_then_dropped_or_shown():
    early, dropped = relayed(OPEN_MPI, show_reports=False)
    assert early == dropped == "error: --epochs must be at least 1, got 0\n"
    _, shown = relayed(OPEN_MPI, show_reports=True)
    assert shown == OPEN_MPI


def test_other_boxes_dashes_and_gloo_reports():
    other = f"{RULE}\nA warning of Open MPI's own\n{RULE}\nafter\n"
    assert relayed(other, show_reports=False)[0] == other  # not a failed-process report: shown
    table = "-" * 10 + "\nrow\n"
    assert relayed(table, show_reports=False)[0] == table
    gloo = ("horovodrun: RuntimeError: Horovod detected that one or more processes exited with "
            "non-zero status, thus causing the job to be terminated.\n")
    assert relayed(gloo, show_reports=False) == ("", "")
    assert relayed(gloo, show_reports=True)[1] == gloo
    unclosed = RULE + "\n" + "line\n" * 50  # never closed: written, not held to the end
    assert relayed(unclosed, show_reports=False)[0] == unclosed


def test_horovodruns_own_traceback_becomes_its_message():
    tb = ('Traceback (most recent call last):\n  File "/x/horovod/runner/launch.py", line 1\n'
          "RuntimeError: no such host\n")
    assert relayed(tb, show_reports=True)[1] == "horovodrun: the launcher says: no such host\n"
    worker = 'Traceback (most recent call last):\n  File "train.py", line 3\nValueError: bad\n'
    assert relayed(worker, show_reports=True)[1] == worker
