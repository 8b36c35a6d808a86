"""The one place that imports the Kaldi wrappers, in the only safe order.

kaldi-hmm-gmm 1.1.4 was built against an older OpenFst than kaldilm 1.15.5;
importing a new-OpenFst library first deadlocks inside dlopen, and FSTs cross
between the three pinned wrappers only at kaldifst 1.7.17 / kaldi-decoder
0.2.11 (../shared/DESIGN.md, "The OpenFst ABI trap"). kaldilm must come last.
Everything else in asrhybrid imports these names from here.
"""

import kaldi_hmm_gmm as khg  # noqa: I001  (order matters, see above)
import kaldifst
import kaldi_decoder as kd
import kaldilm

__all__ = ["khg", "kaldifst", "kd", "kaldilm"]
