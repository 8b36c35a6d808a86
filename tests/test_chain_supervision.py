"""Chain supervision (asrhybrid.chain.supervision) on Kaldi's yesno lang with the chain topology: the
alignment's own pdfs are a numerator path of its whole utterance and of every chunk of it; a pdf sequence the
alignment does not put within the tolerance costs the -1e4 of each frame outside it; normalised by a
denominator, a numerator is a subset of the denominator's paths with their weights (equal totals where the
outputs allow one pdf sequence, never more otherwise) and a phone sequence the denominator cannot produce has
no numerator; and Kaldi chain's tree helpers (the topology, phone spans at a third of the frame rate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import require_shared
from lhotse import MonoCut, SupervisionSegment

from asrhybrid.align.graphs import GraphCompiler, phone_instances, transition_arrays
from asrhybrid.chain.den_graph import make_den_graph
from asrhybrid.chain.phone_lm import PhoneLmOptions, estimate_phone_lm
from asrhybrid.chain.supervision import OUTSIDE_TOLERANCE, SupervisionMaker
from asrhybrid.fsa import DenseFsaVec, get_tot_scores
from asrhybrid.fsa.denominator import DenominatorTopology, denominator_log_likelihood
from asrhybrid.kaldi_tables import AlignmentTable, alignment_table_writer
from asrhybrid.kaldi_wrappers import khg
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.lang.prepare_lang import prepare_lang
from asrhybrid.tree.build import chain_topology, subsampled_spans


def test_chain_topology_has_two_pdf_classes_and_one_frame_phones():
    topo = khg.HmmTopology()
    topo.read(chain_topology([3, 1, 2]))
    assert list(topo.phones) == [1, 2, 3]
    assert all(topo.num_pdf_classes(p) == 2 and topo.min_length(p) == 1 for p in topo.phones)


def test_subsampled_spans_round_boundaries_and_keep_every_phone():
    # 30 frames: phones of 9, 3, 1, 2 and 15 frames at a third of the rate (10 frames)
    spans = [(0, 9), (9, 12), (12, 13), (13, 15), (15, 30)]
    out = subsampled_spans(spans, 30, 3)
    assert out[0] == (0, 3) and out[-1][1] == 10
    assert all(e > b for b, e in out) and all(a[1] == b[0] for a, b in zip(out, out[1:]))
    assert subsampled_spans([(0, 1), (1, 2), (2, 3)], 3, 3) is None  # three phones, one frame
    assert subsampled_spans(spans, 30, 1) == spans


@pytest.fixture(scope="module")
def chain_yesno(tmp_path_factory):
    """(SupervisionMaker with tolerance 1, the cut, its alignment) for 'NO YES NO' on a monophone chain model."""
    tmp = tmp_path_factory.mktemp("sup")
    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    lang = prepare_lang(tutorial / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
    phones = read_symbol_table(lang / "phones.txt")
    ids = sorted(i for name, i in phones.items() if not name.startswith(("#", "<eps>")))
    topo = khg.HmmTopology()
    topo.read(chain_topology(ids))
    tree = khg.monophone_context_dependency(phones=ids, phone2num_pdf_classes=[0] + [2] * max(ids))
    trans = khg.TransitionModel(ctx_dep=tree, hmm_topo=topo)
    first = trans.state2id
    tids = {}
    for state in range(1, trans.num_transition_states + 1):
        for t in range(first[state], first[state + 1]):
            tids[(trans.transition_id_to_phone(t), bool(trans.is_self_loop(t)))] = t
    sil, y, n = phones["SIL"], phones["Y"], phones["N"]
    alignment = []
    for phone, frames in [(sil, 4), (n, 5), (y, 6), (sil, 2), (n, 5), (sil, 3)]:
        alignment += [tids[(phone, False)]] + [tids[(phone, True)]] * (frames - 1)
    with alignment_table_writer(tmp / "ali.ark") as write:
        write("utt", alignment)
    cut = MonoCut(
        "utt", 0, len(alignment) * 0.03, 0, supervisions=[SupervisionSegment("utt", "utt", 0, 1, text="NO YES NO")]
    )
    maker = SupervisionMaker(GraphCompiler(lang, tree, trans), AlignmentTable(tmp / "ali.ark"), tolerance=1)
    return maker, cut, np.asarray(alignment), trans


@pytest.fixture(scope="module")
def normalised(chain_yesno):
    """(SupervisionMaker normalised by the denominator of the fixture's alignment's phones, the denominator)."""
    maker, _, alignment, trans = chain_yesno
    tid_phone, starts = transition_arrays(trans)
    phones = [p for _, p, _, _, _ in phone_instances(alignment, tid_phone, starts)]
    den = make_den_graph(estimate_phone_lm([phones], PhoneLmOptions(4, 3, 2000)), maker.compiler.tree, trans)
    return SupervisionMaker(maker.compiler, maker.alignments, tolerance=1, den=den), den


def _columns(trans) -> torch.Tensor:
    return torch.arange(trans.num_pdfs + 1) - 1  # the graphs' labels are pdf + 1


def _numerator(sup, pdfs: list[int], trans, elsewhere: float = -30.0) -> float:
    x = torch.full((1, len(pdfs), trans.num_pdfs), elsewhere, dtype=torch.float64)
    x[0, torch.arange(len(pdfs)), torch.as_tensor(pdfs)] = 0.0
    x = x + torch.where(sup.allowed, 0.0, OUTSIDE_TOLERANCE)[None]
    dense = DenseFsaVec(x, torch.tensor([len(pdfs)]), _columns(trans))
    return float(get_tot_scores([sup.graph], dense, log_semiring=True, engine="torch")[0])


def test_the_alignment_is_a_path_of_the_utterance_and_of_every_chunk(chain_yesno):
    maker, cut, alignment, trans = chain_yesno
    pdfs = np.asarray(trans.transition_id_to_pdf_array())[alignment].tolist()
    assert _numerator(maker.whole(cut, len(pdfs)), pdfs, trans) > -1.0 * len(pdfs)
    for first, frames in [(0, 25), (3, 7), (10, 10), (20, 5), (12, 1)]:
        sup = maker.chunk(cut, first, frames)
        assert sup.allowed.shape == (frames, trans.num_pdfs)
        total = _numerator(sup, pdfs[first : first + frames], trans)
        assert total > -1.0 * frames, (first, frames, total)


def test_each_frame_allows_the_pdfs_of_the_phones_within_the_tolerance(chain_yesno):
    maker, cut, alignment, trans = chain_yesno
    tid_to_pdf = np.asarray(trans.transition_id_to_pdf_array())
    starts = [0, 4, 9, 15, 17, 22, 25]  # the phone spans the fixture aligned
    for t in range(25):
        near = {int(p) for b, e in zip(starts, starts[1:]) if b - 1 <= t < e + 1 for p in tid_to_pdf[alignment[b:e]]}
        assert set(torch.nonzero(maker.whole(cut, 25).allowed[t]).squeeze(1).tolist()) == near
    # 'YES' (frames 9-14) started 3 frames late: N's pdf held over frames 10-11 is outside the tolerance of 1,
    # and with no other pdf possible there the numerator pays -1e4 for each of those two frames
    pdfs = tid_to_pdf[alignment].tolist()
    late = pdfs[:4] + [pdfs[4]] + [pdfs[5]] * 7 + [pdfs[9], pdfs[10], pdfs[10]] + pdfs[15:]
    assert len(late) == 25
    total = _numerator(maker.chunk(cut, 0, 25), late, trans, elsewhere=-float("inf"))
    assert 2 * OUTSIDE_TOLERANCE - 1 < total < OUTSIDE_TOLERANCE


def test_a_normalised_numerator_is_the_denominators_share_of_its_paths(chain_yesno, normalised):
    _, cut, alignment, trans = chain_yesno
    norm, den = normalised
    pdfs = np.asarray(trans.transition_id_to_pdf_array())[alignment].tolist()
    rng = torch.Generator().manual_seed(0)
    for kind, first, frames in [
        ("whole", 0, 25),
        ("chunk", 0, 25),
        ("chunk", 3, 7),
        ("chunk", 20, 5),
        ("chunk", 12, 1),
    ]:
        sup = norm.whole(cut, frames) if kind == "whole" else norm.chunk(cut, first, frames)
        assert sup is not None and bool((sup.graph.label[sup.graph.label > 0] <= trans.num_pdfs).all())
        # a chunk's denominator may end in any state, a whole utterance's where the graph ends (as training's)
        topo = DenominatorTopology.from_graph(den.fsa, den.initial, torch.float64, all_final=kind == "chunk")
        only = torch.full((1, frames, trans.num_pdfs), -math.inf, dtype=torch.float64)
        only[0, torch.arange(frames), torch.as_tensor(pdfs[first : first + frames])] = 0.0
        noise = torch.randn(3, 1, frames, trans.num_pdfs, generator=rng, dtype=torch.float64)
        for x in [only, *noise]:
            allowed = torch.where(sup.allowed, 0.0, OUTSIDE_TOLERANCE)[None]
            dense = DenseFsaVec(x + allowed, torch.tensor([frames]), _columns(trans))
            numerator = float(get_tot_scores([sup.graph], dense, log_semiring=True, engine="torch")[0])
            dense = DenseFsaVec(x, torch.tensor([frames]), den.label_to_column)
            denominator = float(denominator_log_likelihood(topo, dense)[0])
            if x is only:  # one pdf sequence: the same paths of the denominator, the same total
                assert -60 < numerator < 0, (kind, first, frames, numerator)  # the phone LM's weight, finite
                assert numerator == pytest.approx(denominator, abs=1e-6), (kind, first, frames)
            else:
                assert numerator <= denominator + 1e-9, (kind, first, frames)


def test_a_phone_sequence_the_denominator_cannot_make_has_no_numerator(chain_yesno, normalised):
    maker, cut, _, _ = chain_yesno
    norm, _ = normalised
    text = SupervisionSegment("yy", "utt", 0, 1, text="YES YES YES")  # the phone LM never saw Y after Y or SIL
    odd = MonoCut("utt", 0, cut.duration, 0, supervisions=[text])
    assert maker.whole(odd, 25) is not None  # unnormalised: the transcript's own graph
    assert norm.whole(odd, 25) is None
