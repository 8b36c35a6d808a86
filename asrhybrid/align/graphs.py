"""Training graphs and forced alignment, through Kaldi's aligner, k2 or the torch FSA engine.

Graphs are Kaldi's compile-train-graphs (kaldi-hmm-gmm's TrainingGraphCompiler,
transition and self-loop scales 0, then transition probabilities added with
transition scale 1.0 and self-loop scale 0.1, as Kaldi's align scripts do).
Alignment takes frame log-likelihoods per pdf (for a hybrid model, log
posteriors minus log priors). Three back-ends give the same best path
(tests/test_fsa_intersect.py, tests/test_fsa_k2.py) except where Kaldi's beam
loses it: ``kaldi`` (the C++ aligner, pruned by its beams), ``k2`` and
``torch`` (asrhybrid.fsa's two engines, exact). The default per device comes
from bench/align.py (docs/alignment.md, "FSA engines and alignment back-ends"): see :func:`default_backend`.
What Kaldi's beams lose, an exact FSA engine aligns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asrhybrid.align import BACKENDS
from asrhybrid.fsa import DenseFsaVec, from_kaldi, shortest_path
from asrhybrid.fsa.k2_engine import with_cuda
from asrhybrid.kaldi_wrappers import kaldifst, khg
from asrhybrid.lang.io import read_int_list, read_symbol_table

log = logging.getLogger(__name__)


# The fastest exact engine per device, from bench/align.py on one CPU thread (2026-11-30, frames/s):
#   random scores over yesno graphs:   torch 468k, k2 212k, (Kaldi 94k)
#   synth flat-start network's scores: torch 305k, k2 95k,  (Kaldi 197k: beam 20 pruned hard, and lost the
#                                      best path on 1.75% of utterances)
# So the torch engine on CPU; on CUDA too, unless k2 was built with CUDA (not measured here: no GPU).
def default_backend(device: str) -> str:
    """The exact FSA engine that aligns fastest on ``device`` (k2 or torch), given what is installed."""
    return "k2" if str(device).startswith("cuda") and with_cuda() else "torch"


class TrainingGraph:
    """One utterance's training graph as Kaldi's FST, and as an Fsa for the FSA engines (converted on first
    use, then kept with it; the Fsa caches its k2 form in turn)."""

    def __init__(self, fst):
        self.fst = fst
        self._fsa = None

    @property
    def fsa(self):
        if self._fsa is None:
            self._fsa = from_kaldi(self.fst)
        return self._fsa


def _graph(g) -> TrainingGraph:
    return g if isinstance(g, TrainingGraph) else TrainingGraph(g)


@dataclass
class GraphCompiler:
    lang_dir: Path
    tree: object
    trans_model: object

    def __post_init__(self):
        self.words = read_symbol_table(self.lang_dir / "words.txt")
        self.disambig = read_int_list(self.lang_dir / "phones" / "disambig.int")
        self.oov = (self.lang_dir / "oov.txt").read_text().strip()
        self._compiler = khg.TrainingGraphCompiler(
            trans_model=self.trans_model,
            ctx_dep=self.tree,
            lex_fst=kaldifst.StdVectorFst.read(str(self.lang_dir / "L.fst")),
            disambig_syms=self.disambig,
            opts=khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0),
        )

    def word_ids(self, text: str) -> list[int]:
        """Transcript words as ids; words outside words.txt become the OOV word (as Kaldi's sym2int.pl --map-oov)."""
        return [self.words.get(w, self.words[self.oov]) for w in text.split()]

    def compile(self, text: str, transition_probs: bool = True):
        """The training graph of ``text``; with ``transition_probs`` the HMMs' (transition scale 1, self-loop
        scale 0.1, as Kaldi's aligners), without them the lexicon's scores only (chain numerators)."""
        graph = self._compiler.compile_graph_from_text(self.word_ids(text))
        if not transition_probs:
            return graph
        khg.add_transition_probs(
            trans_model=self.trans_model,
            disambig_syms=self.disambig,
            transition_scale=1.0,
            self_loop_scale=0.1,
            fst=graph,
        )
        return graph


def transition_arrays(trans_model) -> tuple[np.ndarray, np.ndarray]:
    """Per transition id (index 0 unused): its phone, and whether a phone instance starts with it.

    With Kaldi's reordered HMMs the first frame of each state is its forward
    transition, so a phone starts at a start-of-phone transition that is not a self-loop.
    """
    n = trans_model.num_transition_ids
    tid_phone = np.zeros(n + 1, dtype=np.int64)
    tid_starts_phone = np.zeros(n + 1, dtype=bool)
    for t in range(1, n + 1):
        tid_phone[t] = trans_model.transition_id_to_phone(t)
        tid_starts_phone[t] = trans_model.transition_ids_is_start_of_phone(t) and not trans_model.is_self_loop(t)
    return tid_phone, tid_starts_phone


def phone_instances(tids, tid_phone: np.ndarray, tid_starts_phone: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """(left, phone, right, first frame, end frame) of each phone instance of an alignment (context 0 at the edges)."""
    tids = np.asarray(tids)
    starts = np.flatnonzero(tid_starts_phone[tids])
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.concatenate([starts[1:], [len(tids)]])
    phones = [int(p) for p in tid_phone[tids[starts]]]
    return [
        (phones[k - 1] if k > 0 else 0, phones[k], phones[k + 1] if k + 1 < len(phones) else 0, int(b), int(e))
        for k, (b, e) in enumerate(zip(starts, ends))
    ]


def tid_loglikes(pdf_loglikes: np.ndarray, tid_to_pdf: np.ndarray) -> np.ndarray:
    """[T, num_pdfs] -> [T, num_tids] with column tid-1 (kaldi-hmm-gmm's DecodableCtc reads M[t, tid-1])."""
    return np.ascontiguousarray(pdf_loglikes[:, tid_to_pdf[1:]], dtype=np.float32)


def equal_alignment(graph, num_frames: int, seed: int, prefer=None, tries: int = 20) -> list[int] | None:
    """Kaldi's align-equal-compiled: a random path of the graph with frames shared out equally.

    With ``prefer`` (a test on an alignment), up to ``tries`` paths are drawn
    and the first that passes is kept (the last drawn if none does).
    """
    tids = None
    for k in range(tries if prefer else 1):
        ok, aligned = kaldifst.equal_align(graph, num_frames, seed + k * 7919)
        if not ok:
            return None
        tids = [t for t in kaldifst.get_linear_symbol_sequence(aligned)[1] if t > 0]
        if prefer is None or prefer(tids):
            break
    return tids


def align_kaldi(
    graphs: list, pdf_loglikes: list[np.ndarray], tid_to_pdf: np.ndarray, beam: float = 10.0, retry_beam: float = 40.0
) -> list[tuple[list[int], float] | None]:
    """Kaldi's aligner per utterance: (transition ids, score) or None when it fails.

    ``graphs``: Kaldi FSTs or :class:`TrainingGraph`s (as for every aligner here)."""
    out = []
    for graph, ll in zip(graphs, pdf_loglikes):
        r = khg.align_utterance_wrapper(
            config=khg.AlignConfig(beam=beam, retry_beam=retry_beam),
            utt="u",
            acoustic_scale=1.0,
            fst=_graph(graph).fst,
            decodable=khg.DecodableCtc(tid_loglikes(ll, tid_to_pdf)),
            num_done=0,
            num_error=0,
            num_retried=0,
            tot_like=0.0,
            frame_count=0,
        )
        out.append((list(r[5]), float(r[3])) if r[0] == 1 else None)
    return out


def align_fsa(
    graphs: list,
    pdf_loglikes: list[np.ndarray],
    tid_to_pdf: np.ndarray,
    device: str = "cpu",
    batch: int = 256,
    max_cells: float = 4e8,
    engine: str | None = None,
) -> list[tuple[list[int], float] | None]:
    """Exact Viterbi through an FSA engine (k2 or torch; default: the device's, :func:`default_backend`):
    (transition ids, score) or None where no path fits the frames.

    Utterances are batched longest first (a batch pads its score matrix to
    similar lengths), at most ``batch`` of them and at most ``max_cells``
    (graph states x frames: the torch engine keeps a byte of back-pointer each) per batch.
    """
    graphs = [_graph(g) for g in graphs]
    engine = engine or default_backend(device)
    label_to_column = torch.as_tensor(tid_to_pdf, dtype=torch.int64)  # tid -> pdf column
    order = sorted(range(len(graphs)), key=lambda i: -pdf_loglikes[i].shape[0])
    out: list[tuple[list[int], float] | None] = [None] * len(graphs)
    for chunk in _batches(order, [pdf_loglikes[i].shape[0] for i in order], batch, max_cells, graphs):
        lengths = [pdf_loglikes[i].shape[0] for i in chunk]
        # frames past an utterance's length are never read: no need to clear them
        log_probs = torch.empty((len(chunk), max(lengths), pdf_loglikes[chunk[0]].shape[1]))
        for row, i in enumerate(chunk):
            log_probs[row, : lengths[row]] = torch.from_numpy(np.asarray(pdf_loglikes[i], dtype=np.float32))
        dense = DenseFsaVec(log_probs.to(device), torch.tensor(lengths), label_to_column)
        best = shortest_path([graphs[i].fsa for i in chunk], dense, engine)
        for i, score, labels in zip(chunk, best.scores.tolist(), best.labels):
            out[i] = (labels, score) if labels else None
    return out


def _batches(order: list[int], frames: list[int], batch: int, max_cells: float, graphs: list[TrainingGraph]):
    """Consecutive groups of ``order`` (longest first) within the size limits."""
    chunk, states, longest = [], 0, 0
    for i, length in zip(order, frames):
        num_states = graphs[i].fsa.num_states
        if chunk and (len(chunk) == batch or (states + num_states) * (longest + 1) > max_cells):
            yield chunk
            chunk, states = [], 0
        if not chunk:
            longest = length
        chunk.append(i)
        states += num_states
    if chunk:
        yield chunk


def align(
    graphs,
    pdf_loglikes,
    tid_to_pdf,
    backend: str = "auto",
    device: str | None = None,
    beam: float = 10.0,
    retry_beam: float = 40.0,
):
    """Forced alignment with ``backend`` (kaldi, k2, torch; ``auto``: :func:`default_backend` of the device).

    The beams are Kaldi's (the FSA engines search exhaustively and need none).
    Utterances that Kaldi's beams lose even at the retry beam are aligned again
    by an exact FSA engine; None is left only where no path fits the frames.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown alignment back-end '{backend}' (expected one of {', '.join(BACKENDS)})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "auto":
        backend = default_backend(device)
    graphs = [_graph(g) for g in graphs]
    if backend != "kaldi":
        return align_fsa(graphs, pdf_loglikes, tid_to_pdf, device, engine=backend)
    results = align_kaldi(graphs, pdf_loglikes, tid_to_pdf, beam, retry_beam)
    lost = [i for i, r in enumerate(results) if r is None]
    if lost:
        exact = align_fsa([graphs[i] for i in lost], [pdf_loglikes[i] for i in lost], tid_to_pdf, device)
        for i, r in zip(lost, exact):
            results[i] = r
        log.info(
            "%d utterance(s) failed Kaldi's beams (%g, retry %g); the FSA Viterbi aligned %d of them",
            len(lost),
            beam,
            retry_beam,
            sum(r is not None for r in exact),
        )
    return results
