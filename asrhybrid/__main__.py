"""``python -m asrhybrid VERB ...`` (and ``torchrun --nproc-per-node N -m asrhybrid train-am ...``)."""

import sys

from asrhybrid.cli import main

sys.exit(main())
