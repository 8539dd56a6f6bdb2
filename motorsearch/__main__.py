import os
import sys

# OpenMP threads that spin while waiting run many times slower when other processes share the
# cores (measured: a tiny-model training step 2.2 s passive vs 13 s spinning at load 12 on 2
# cores). Must be set before torch loads OpenMP; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from motorsearch.cli import main  # noqa: E402

sys.exit(main())
