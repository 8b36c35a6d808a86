"""LF-MMI's denominator graph (asrhybrid.chain.den_graph) on Kaldi's yesno lang: a pdf sequence of one training
alignment scores, through the graph, exactly the phone LM's probability of its phones (the HMMs add no
weight); every training alignment is a path; Kaldi's initial probabilities are a distribution; the graph
round-trips through its file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import require_shared

from asrhybrid.align.graphs import GraphCompiler, equal_alignment, phone_instances, transition_arrays
from asrhybrid.chain.den_graph import INITIAL_STEPS, DenominatorGraph, make_den_graph
from asrhybrid.chain.phone_lm import PhoneLmOptions, estimate_phone_lm
from asrhybrid.fsa import DenseFsaVec
from asrhybrid.fsa.denominator import denominator_log_likelihood
from asrhybrid.hmm import init_mono_model
from asrhybrid.lang.prepare_lang import prepare_lang


@pytest.fixture(scope="module")
def yesno_alignments(tmp_path_factory):
    """(tree, trans model, [(tids, phones)]) for 40 random yes/no sentences aligned evenly on a mono model."""
    tmp = tmp_path_factory.mktemp("den")
    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    lang = prepare_lang(tutorial / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
    tree, trans = init_mono_model(lang, tmp / "mono")
    compiler = GraphCompiler(lang, tree, trans)
    tid_phone, starts = transition_arrays(trans)
    rng = np.random.default_rng(0)
    out = []
    for k in range(40):
        sentence = " ".join(rng.choice(["YES", "NO"], int(rng.integers(1, 6))))
        tids = equal_alignment(compiler.compile(sentence), 25 * len(sentence.split()), seed=k)
        assert tids is not None
        out.append((tids, [p for _, p, _, _, _ in phone_instances(tids, tid_phone, starts)]))
    return tree, trans, out


def test_an_alignments_pdfs_score_the_phone_lms_probability(yesno_alignments, tmp_path):
    tree, trans, alignments = yesno_alignments
    lm = estimate_phone_lm([phones for _, phones in alignments], PhoneLmOptions(4, 3, 2000))
    den = make_den_graph(lm, tree, trans)
    assert int((den.fsa.label == 0).sum()) == 0  # epsilon-free
    assert int((den.fsa.label > 0).sum()) > 0
    tid_to_pdf = np.asarray(trans.transition_id_to_pdf_array())
    for tids, phones in alignments[:15]:
        pdfs = torch.as_tensor(tid_to_pdf[np.asarray(tids)])
        x = torch.full((1, len(tids), trans.num_pdfs), -math.inf, dtype=torch.float64)
        x[0, torch.arange(len(tids)), pdfs] = 0.0  # only this pdf sequence
        dense = DenseFsaVec(x, torch.tensor([len(tids)]), den.label_to_column)
        total = float(denominator_log_likelihood(den.fsa, dense, 0.0)[0])  # from the start state
        # minimisation quantises weights to 1/1024 (OpenFst's kDelta, through kaldifst's minimize_encoded)
        assert total == pytest.approx(lm.sentence_log_prob(phones), abs=(len(phones) + 1) / 1024)
    # Kaldi's initial probabilities: a distribution over the states, the start state's share 1/100 (Kaldi
    # averages each step's probabilities before taking it), so every training sequence is possible from it with
    # at least that share of its phone LM probability (no frame off the graph: each would cost 30)
    assert float(den.initial.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(den.initial[0].exp()) == pytest.approx(1.0 / INITIAL_STEPS)
    for tids, phones in alignments:
        pdfs = torch.as_tensor(tid_to_pdf[np.asarray(tids)])
        x = torch.full((1, len(tids), trans.num_pdfs), -30.0, dtype=torch.float64)
        x[0, torch.arange(len(tids)), pdfs] = 0.0
        dense = DenseFsaVec(x, torch.tensor([len(tids)]), den.label_to_column)
        total = float(denominator_log_likelihood(den.fsa, dense, 0.0, den.initial)[0])
        assert total >= lm.sentence_log_prob(phones) + math.log(1.0 / INITIAL_STEPS) - (len(phones) + 1) / 1024
    den.save(tmp_path / "den.pt")
    again = DenominatorGraph.load(tmp_path / "den.pt")
    assert torch.equal(again.fsa.label, den.fsa.label) and torch.equal(again.initial, den.initial)
    assert again.num_pdfs == trans.num_pdfs
