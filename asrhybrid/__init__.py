"""asrhybrid: Kaldi-style speech recognition recipes in Python.

The packages are the pipeline's layers, each importing only from those below it (pyproject.toml's import-linter
contracts, checked by ``make lint``), top to bottom:

- ``cli`` (the ``asrhybrid`` command), ``recipe`` (the stage runner behind ``make``; it reads recipes),
- ``verbs``: one ``asrhybrid <verb>`` per step; a verb decides paths, skipping, forcing and markers,
- ``e2e`` (stages 9-10), ``score``; ``decode`` (stages 7-8), ``tree`` (5); ``align`` (4);
  ``nnet`` (the hybrid networks, 6), ``graph`` (HCLG and its k2 form);
  ``features``, ``lm``, ``hmm`` (the HMM model dir: topology, tree, transition model); ``data``, ``lang``,
  ``kaldi_tables`` (Kaldi archives and scp tables),
- shared ground: ``fsa`` (FSA algorithms on k2 or torch), ``outputs`` (atomic files, completion markers),
  ``options``, ``determinism``, ``logs``, ``install``; ``errors``, ``kernels``, ``jobs``, ``kaldi_wrappers`` (the
  Kaldi wrappers, imported in their one safe order).
"""

__version__ = "0.1.0"

# Before torch loads: the same CPU kernels on every x86-64 machine with AVX2, and OpenMP threads that sleep when
# idle (asrhybrid/kernels.py).
from asrhybrid.kernels import pin_cpu_kernels, sleep_idle_threads  # noqa: E402

pin_cpu_kernels()
sleep_idle_threads()
