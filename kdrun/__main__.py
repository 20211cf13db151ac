"""`python -m kdrun ...` (and so `torchrun --nproc_per_node=N -m kdrun ...`): the same as `kdrun ...`."""

from kdrun.cli.main import main

main()
