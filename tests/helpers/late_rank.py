"""Run a script with rank 1 starting late: ``python late_rank.py SECONDS SCRIPT ARGS...``.

Rank 1 (by the launcher's environment) sleeps SECONDS first, as a rank on a loaded or slower host
does; every rank then runs SCRIPT as its main module with ARGS.
"""

import os
import runpy
import sys
import time

from common.base.errors import env_rank

if env_rank() == "1":
    time.sleep(float(sys.argv[1]))
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
