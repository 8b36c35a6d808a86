"""The FSA engine (k2's role, since k2 cannot be installed): FSAs as tensors, intersect_dense on CPU or CUDA."""

from asrhybrid.fsa.fsa import DenseFsaVec, Fsa, FsaVec, from_kaldi
from asrhybrid.fsa.intersect import arc_posteriors, get_tot_scores, shortest_path, state_posteriors

__all__ = ["DenseFsaVec", "Fsa", "FsaVec", "from_kaldi", "arc_posteriors", "get_tot_scores", "shortest_path", "state_posteriors"]
