"""asrhybrid: Kaldi-style speech recognition recipes in Python.

The package layout follows the pipeline: ``data -> features -> lang -> lm ->
align -> tree -> nnet/train -> graph -> decode -> score``, with ``recipe``
running numbered stages and ``cli`` exposing each stage as an ``asrhybrid`` verb.
"""

__version__ = "0.1.0"

# Before any tensor operation: the same CPU kernels on every x86-64 machine with AVX2 (asrhybrid/kernels.py).
from asrhybrid.kernels import pin_cpu_kernels  # noqa: E402

pin_cpu_kernels()
