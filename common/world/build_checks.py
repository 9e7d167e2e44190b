"""Build checks owns horovodrun's answers to "what was Horovod built with", remembered per installed file.

Before every launch ``horovodrun`` asks whether Horovod was built with MPI or Gloo. Horovod
answers by importing one of its framework extensions in a forked process: for this package's
build, ``horovod.tensorflow`` and so TensorFlow itself, several seconds of CPU on every launch
(measured on this project's 2-core machine, 2026-12-02: 5 to 8 s a launch). The answer only
changes when the extension's library or the framework it loads is replaced, so
:func:`remembered` keeps each answer in a small JSON file keyed by those files' path, size and
modification time, and asks Horovod again whenever any of them differs.

Only "built" and "built with X" answers are kept; "running with GPU" depends on the machine and
is always asked. A failed check (the extension does not import) is never kept. ``verbose``
checks (``horovodrun --verbose 2``) always run, so that the user sees them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.base.files import atomic_write

CACHE_ENV = "HOROVOD_RECIPES_CACHE"
KEPT = {"built", "built with MPI", "built with Gloo", "built with NCCL", "built with DDL",
        "built with CCL"}


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "horovod-recipes")
    return Path(root) / "build-checks.json"


def stamp(ext_base_name: str) -> list | None:
    """(path, size, mtime_ns) of every library in ``horovod/<ext_base_name>/`` and of the
    framework package's ``__init__.py``; None when either cannot be found."""
    spec = importlib.util.find_spec("horovod")
    framework = importlib.util.find_spec(ext_base_name)
    if spec is None or not spec.submodule_search_locations or framework is None \
            or not framework.origin:
        return None
    ext_dir = Path(list(spec.submodule_search_locations)[0]) / ext_base_name
    files = sorted(ext_dir.glob("*.so")) + [Path(framework.origin)]
    if len(files) < 2:
        return None
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, entries: dict) -> None:
    """Atomically; a cache that cannot be written is simply not kept."""
    try:
        atomic_write(str(path), lambda f: json.dump(entries, f, indent=1), mode="w")
    except OSError:
        pass


def remembered(check: Callable[..., Any]) -> Callable[..., Any]:
    """``check`` (Horovod's ``_check_extension_lambda``) answering kept questions from the
    cache while the files it depends on are unchanged."""

    def cached_check(ext_base_name, fn, fn_desc, verbose):
        if verbose or fn_desc not in KEPT:
            return check(ext_base_name, fn, fn_desc, verbose)
        key = f"{ext_base_name}: {fn_desc}"
        now = stamp(ext_base_name)
        path = cache_file()
        entries = _read(path)
        entry = entries.get(key)
        if now is not None and isinstance(entry, dict) and entry.get("stamp") == now:
            return entry["result"]
        result = check(ext_base_name, fn, fn_desc, verbose)
        # Horovod's answers are bools or, for NCCL/DDL/CCL, the library's 0 or 1.
        if now is not None and isinstance(result, int):
            entries = _read(path)  # another launch may have added its own meanwhile
            entries[key] = {"stamp": now, "result": result}
            _write(path, entries)
        return result

    return cached_check


def check_build(modules: list[str]) -> None:
    """``horovodrun --check-build``'s table, with its checks remembered, after importing
    ``modules`` (Horovod's framework extensions among them) in this process.

    Horovod answers each check in a fork of the asking process; forked from a process that has
    already imported the extension, a check imports nothing again. So setup's check (several
    framework imports in a row from ``horovodrun --check-build``, about 35 s on 2 cores) costs
    one import of each framework, and fills this module's cache for the launches after it."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    import horovod.common.util as util
    from horovod.runner.launch import check_build as horovod_check_build

    util._check_extension_lambda = remembered(util._check_extension_lambda)
    horovod_check_build(verbose=False)  # prints the table and exits 0


if __name__ == "__main__":
    import sys

    check_build(sys.argv[1:])
