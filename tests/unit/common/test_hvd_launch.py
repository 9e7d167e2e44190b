"""Tests of common/launch/hvd_launch.py: the stderr relay (the launcher's report of a failed process
is held to the job's end, then dropped after a clean stop or a user error, shown otherwise), and
the restarts' host bookkeeping, with the real wrapper around a stand-in launcher (a shell that
records its arguments and fails the way rank 0 reports a lost rank)."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common.launch import hvd_launch

ROOT = Path(__file__).resolve().parents[3]

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
    gloo = ("Process 1 exit with status code 2.\nTerminating remaining workers after failure of "
            "Process 1.\nProcess 0 exit with status code 143.\n"
            "horovodrun: RuntimeError: Horovod detected that one or more processes exited with "
            "non-zero status, thus causing the job to be terminated. The first process to do so "
            "was:; Process name: 1; Exit code: 2\n")
    assert relayed(gloo, show_reports=False) == ("", "")
    assert relayed(gloo, show_reports=True)[1] == gloo
    worker = "[1]<stdout>:Process 1 exit with status code 2.\nProcess 1 exit with status code 2 (x)\n"
    assert relayed(worker, show_reports=False)[0] == worker  # only the launcher's exact lines
    unclosed = RULE + "\n" + "line\n" * 50  # never closed: written, not held to the end
    assert relayed(unclosed, show_reports=False)[0] == unclosed


def test_horovodruns_own_traceback_becomes_its_message():
    tb = ('Traceback (most recent call last):\n  File "/x/horovod/runner/launch.py", line 1\n'
          "RuntimeError: no such host\n")
    assert relayed(tb, show_reports=True)[1] == "horovodrun: the launcher says: no such host\n"
    worker = 'Traceback (most recent call last):\n  File "train.py", line 3\nValueError: bad\n'
    assert relayed(worker, show_reports=True)[1] == worker


def test_slots_read_horovodrun_and_mpirun_spellings_and_place_ranks_in_order():
    slots = hvd_launch.Slots.of(["horovodrun", "-np", "3", "-H", "a:2,b:1", "python", "t.py",
                                 "-np", "9"])
    assert (slots.np, slots.hosts) == (3, [("a", 2), ("b", 1)])  # the program's -np is its own
    assert [slots.host_of(r) for r in range(4)] == ["a", "a", "b", None]
    mpirun = hvd_launch.Slots.of(["mpirun", "--host", "a,b", "-n", "2", "python", "t.py"])
    assert (mpirun.np, mpirun.hosts) == (2, [("a", 1), ("b", 1)])
    assert hvd_launch.Slots.of(["horovodrun", "-np", "2", "python", "t.py"]) is None  # one host
    rewritten = slots.rewrite(["horovodrun", "-np", "3", "-H", "a:2,b:1", "python", "t.py"], 2, "a:2")
    assert rewritten == ["horovodrun", "-np", "2", "-H", "a:2", "python", "t.py"]


def restarts(tmp_path, lost_rank: int | None, code: int, hosts: str, np: int,
             *flags: str) -> tuple[list[str], str]:
    """``hvd-launch --max-restarts 2 flags`` (a process of its own: the wrapper makes itself a
    subreaper and takes the stop signals) around a stand-in launcher that appends its arguments
    to a file, records ``lost_rank`` lost as rank 0 does, and exits with ``code``, until its
    third launch, which succeeds. Returns each launch's arguments and the wrapper's stderr."""
    calls = tmp_path / "calls"
    lost = (f'echo "$(date +%s.%N) disconnected" > "$HVD_LAUNCH_DIR/lost-{lost_rank}"; '
            if lost_rank is not None else "")
    script = (f'echo "$@" >> {shlex.quote(str(calls))}; '
              f'[ "$(wc -l < {shlex.quote(str(calls))})" -ge 3 ] && exit 0; {lost}exit {code}')
    proc = subprocess.run([sys.executable, "-m", "common.launch.hvd_launch", "--max-restarts",
                           "2", "--restart-window", "60", "--restart-backoff", "0", *flags,
                           "sh", "-c", script, "launcher", "-np", str(np), "-H", hosts,
                           "python", "t.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return calls.read_text().splitlines(), proc.stderr


@pytest.mark.parametrize("min_np, left_out", [("1", True), (None, False)])
def test_a_host_that_failed_twice_is_left_out_when_the_others_hold_min_np(tmp_path, min_np,
                                                                            left_out):
    launches, err = restarts(tmp_path, 2, 137, "a:2,b:1", 3,
                             *(["--min-np", min_np] if min_np else []))
    assert launches[:2] == ["-np 3 -H a:2,b:1 python t.py"] * 2
    assert err.count("; rank 2 on b lost; relaunching") == 2
    assert err.count("hvd-launch: lost contact with rank 2 on b first") == 2
    if left_out:  # 2 slots left on a hold --min-np 1
        assert launches[2] == "-np 2 -H a:2 python t.py"
        assert "hvd-launch: leaving out b: it failed twice in 60 s; the next launch runs 2 " \
               "worker(s) on a:2" in err
    else:  # the default minimum is the command's own -np 3: b stays
        assert launches[2] == launches[0]
        assert "but the other hosts have 2 slot(s) for the 3 worker(s) needed" in err


def test_failures_without_a_culprit_leave_every_host_in(tmp_path):
    launches, err = restarts(tmp_path, None, 1, "a:1,b:1", 2, "--min-np", "1")
    assert set(launches) == {"-np 2 -H a:1,b:1 python t.py"} and len(launches) == 3
    assert "leaving out" not in err and " lost;" not in err and err.count("restart ") == 2
