"""asrhybrid: Kaldi-style speech recognition recipes in Python.

The package layout follows the pipeline: ``data -> features -> lang -> lm ->
align -> tree -> nnet/train -> graph -> decode -> score``, with ``recipe``
running numbered stages and ``cli`` exposing each stage as an ``asrhybrid`` verb.
"""

__version__ = "0.1.0"

# Before torch loads: the same CPU kernels on every x86-64 machine with AVX2, and OpenMP threads that sleep when
# idle (asrhybrid/kernels.py).
from asrhybrid.kernels import pin_cpu_kernels, sleep_idle_threads  # noqa: E402

pin_cpu_kernels()
sleep_idle_threads()
