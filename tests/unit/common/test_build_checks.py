"""Tests of common/world/build_checks.py: Horovod's build answers kept per installed file, asked again
when a file changes, never kept for the machine-dependent or failed checks."""

from __future__ import annotations

import json

import pytest

from common.world import build_checks
from common.world.build_checks import remembered, stamp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(build_checks.CACHE_ENV, str(tmp_path / "cache"))
    files = {"tensorflow": [["/x/mpi_lib.so", 10, 1]], "torch": [["/y/mpi_lib_v2.so", 20, 2]]}
    monkeypatch.setattr(build_checks, "stamp", lambda ext: files.get(ext))
    return tmp_path / "cache" / "build-checks.json", files


class Horovod:
    """Horovod's check, counting how often it really runs."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, ext_base_name, fn, fn_desc, verbose):
        self.calls.append((ext_base_name, fn_desc))
        return self.answer


def test_an_answer_is_kept_until_a_file_it_depends_on_changes(cache):
    path, files = cache
    check = Horovod(True)
    cached = remembered(check)
    assert cached("tensorflow", None, "built with MPI", False) is True
    assert cached("tensorflow", None, "built with MPI", False) is True
    assert check.calls == [("tensorflow", "built with MPI")]  # asked once
    assert json.loads(path.read_text())["tensorflow: built with MPI"]["result"] is True
    cached("tensorflow", None, "built with Gloo", False)  # another question is asked
    assert len(check.calls) == 2
    files["tensorflow"] = [["/x/mpi_lib.so", 10, 999]]  # the library was rebuilt
    check.answer = False
    assert cached("tensorflow", None, "built with MPI", False) is False
    assert len(check.calls) == 3
    assert remembered(Horovod(None))("tensorflow", None, "built with MPI", False) is False


def test_an_answer_of_0_from_the_library_is_kept(cache):
    check = Horovod(0)  # horovod_nccl_built() answers 0 on a CPU build
    cached = remembered(check)
    assert cached("tensorflow", None, "built with NCCL", False) == 0
    assert cached("tensorflow", None, "built with NCCL", False) == 0
    assert check.calls == [("tensorflow", "built with NCCL")]


def test_gpu_verbose_and_failed_checks_are_always_asked(cache):
    path, files = cache
    check = Horovod(True)
    cached = remembered(check)
    for _ in range(2):
        cached("torch", None, "running with GPU", False)  # depends on the machine, not the build
        cached("torch", None, "built with MPI", True)  # --verbose 2 shows the check
    assert len(check.calls) == 4
    failed = Horovod(None)  # the extension did not import
    for _ in range(2):
        assert remembered(failed)("torch", None, "built with Gloo", False) is None
    assert len(failed.calls) == 2
    assert "torch: built with Gloo" not in (json.loads(path.read_text()) if path.exists() else {})
    del files["torch"]  # nothing to key on: asked every time, not kept
    unknown = Horovod(True)
    for _ in range(2):
        remembered(unknown)("torch", None, "built", False)
    assert len(unknown.calls) == 2


def test_an_unwritable_or_broken_cache_only_costs_the_check(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(build_checks.CACHE_ENV, str(blocker / "cache"))  # a file in the way
    monkeypatch.setattr(build_checks, "stamp", lambda ext: [["/x.so", 1, 1]])
    check = Horovod(True)
    assert remembered(check)("torch", None, "built", False) is True
    monkeypatch.setenv(build_checks.CACHE_ENV, str(tmp_path / "c"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "build-checks.json").write_text("{not json")
    assert remembered(check)("torch", None, "built", False) is True
    assert len(check.calls) == 2
    assert remembered(check)("torch", None, "built", False) is True  # now kept
    assert len(check.calls) == 2


def test_the_stamp_names_the_extension_libraries_and_the_framework():
    pytest.importorskip("horovod")
    files = [f for f, _, _ in stamp("torch")]
    assert any("/horovod/torch/" in f and f.endswith(".so") for f in files)
    assert files[-1].endswith("/torch/__init__.py")
    assert stamp("no_such_framework") is None
