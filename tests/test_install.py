"""The pinned Kaldi wrappers import together, in asrhybrid.kaldi_wrappers's order, and share FST objects."""

from __future__ import annotations

import subprocess
import sys

TOPO = """<Topology>
<TopologyEntry>
<ForPhones>
1
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.5 <Transition> 1 0.5 </State>
<State> 1 </State>
</TopologyEntry>
</Topology>
"""

PROBE = f"""
from asrhybrid.kaldi_wrappers import khg, kaldifst, kd, kaldilm
topo = khg.HmmTopology()
topo.read({TOPO!r})
tree = khg.monophone_context_dependency(phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
tm = khg.TransitionModel(ctx_dep=tree, hmm_topo=topo)
fst = kaldifst.StdVectorFst()
s0, s1 = fst.add_state(), fst.add_state()
fst.start = s0
forward = [t for t in range(1, tm.num_transition_ids + 1) if not tm.is_self_loop(t)][0]
fst.add_arc(s0, kaldifst.StdArc(forward, 1, 0.0, s1))
fst.set_final(s1, 0.0)
# An FST made by kaldifst goes into kaldi_hmm_gmm and back (the OpenFst ABI trap of DESIGN.md).
looped = khg.add_self_loops(self_loop_scale=0.1, reorder=True, trans_model=tm, ifst=fst)
print(looped.num_states, sum(1 for s in range(looped.num_states) for _ in kaldifst.ArcIterator(looped, s)))
"""


def test_kaldi_wrappers_share_fsts_and_import_without_deadlock():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    states, arcs = map(int, out.stdout.split())
    assert arcs > 1, "add_self_loops must have added the self-loop"


K2_PROBE = """
import importlib
for name in {order!r}:
    importlib.import_module(name)
import k2, torch
lattice = k2.create_fsa_vec([k2.Fsa.from_str("0 1 1 0.5\\n1 2 -1 0\\n2")])
print(k2.with_cuda, float(lattice.get_tot_scores(use_double_scores=True, log_semiring=True)))
"""


def test_k2_imports_beside_the_kaldi_wrappers_kaldifeat_and_lhotse():
    """k2 before and after the pinned wrappers (in asrhybrid.kaldi_wrappers's order), kaldifeat and lhotse: no deadlock."""
    from conftest import require_k2

    require_k2()
    for order in (
        ["k2", "asrhybrid.kaldi_wrappers", "kaldifeat", "lhotse"],
        ["lhotse", "kaldifeat", "asrhybrid.kaldi_wrappers", "k2"],
    ):
        out = subprocess.run(
            [sys.executable, "-c", K2_PROBE.format(order=order)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        with_cuda, total = out.stdout.split()
        assert with_cuda in ("True", "False") and float(total) == 0.5


def test_check_install_lists_k2():
    from conftest import asrhybrid_cmd, require_k2

    require_k2()
    out = subprocess.run(asrhybrid_cmd() + ["check-install"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fields = [line.split() for line in out.stdout.splitlines()]
    assert any(f[0] == "k2" and f[1][0].isdigit() for f in fields)  # its version
    assert any(f[:2] == ["k2", "cuda"] and f[2] in ("True", "False") for f in fields)
