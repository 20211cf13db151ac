"""profile_sweep.py against an older commit's code, for the "before" column of README.md:
    OLD=$(mktemp -d); git archive 6ac6bd4 kdrun | tar -x -C $OLD; git archive 6ac6bd4 conf | tar -x -C $OLD/kdrun
    OMP_NUM_THREADS=1 .venv/bin/python results/precision/profile_old.py $OLD --epochs 2
The editable install's import finder is set aside, so `kdrun` is imported from OLD."""

import runpy
import sys
from pathlib import Path

sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
sys.path.insert(0, sys.argv[1])
sys.argv = ["profile_sweep.py", *sys.argv[2:]]
runpy.run_path(str(Path(__file__).with_name("profile_sweep.py")), run_name="__main__")
