"""Stage 5: senones without GMMs (after Senior, Heigold, Bacchiani, Liao 2014).

From context-independent alignments, Gaussian statistics of the input features
(count, sum, sum of squares; diagonal) are accumulated per event
(left phone, phone, right phone, HMM state), as Kaldi's acc-tree-stats does.
Each (root phone set of phones/roots.txt, HMM state) starts as one leaf, so
the stress and word-position variants of a phone pool their data; leaves are
split greedily on the question (about the left, right or central phone) that
gains the most likelihood, until the target number of leaves or until no split
keeps ``min_count`` frames on both sides. A target below the number of
(root, HMM state) pairs ties states instead: the pair of clusters of one root
set whose merge loses the least likelihood shares a pdf, until the target is
met (Kaldi's "shared" roots, whose states may share a leaf; e.g. the inner
states of a 5-state silence, which the ergodic topology visits in no fixed order). Questions (``questions``) come from
automatic phone clustering (``auto``, the default, as Kaldi's cluster-phones:
top-down binary clustering of the root sets by the Gaussian statistics of their
states, every cluster a question; it needs no phone inventory, so any lexicon
works), from ARPAbet phonetic classes (``arpabet``), or both; one question per
phone set, per word position and for silence or the utterance edge are always
there. Silence phones are not split on context (Kaldi's context-independent phones).

The tree is written in Kaldi's binary ContextDependency format (event-map
nodes TE / SE / CE / NULL) and loaded through kaldi-hmm-gmm's pickle hook,
which runs Kaldi's own ContextDependency::Read: so H, HCLG, training graphs
and decoding all use it unchanged.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from asrhybrid.align.graphs import phone_instances, transition_arrays
from asrhybrid.data.manifests import load_cuts
from asrhybrid.features.cmvn import global_mean_std
from asrhybrid.hmm import load_model, save_model
from asrhybrid.kaldi_tables import AlignmentTable, alignment_table_writer
from asrhybrid.kaldi_wrappers import khg
from asrhybrid.lang.io import read_int_list, read_symbol_table, read_topo
from asrhybrid.outputs import write_text_atomic

log = logging.getLogger(__name__)

LEFT, CENTER, RIGHT, PDF_CLASS = 0, 1, 2, -1  # Kaldi's event keys for a triphone tree (N=3, P=1)

ARPABET_CLASSES: dict[str, list[str]] = {
    "vowel": "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split(),
    "front_vowel": "IY IH EH AE EY".split(),
    "back_vowel": "UW UH AO AA OW".split(),
    "central_vowel": "AH ER".split(),
    "diphthong": "AW AY OY EY OW".split(),
    "consonant": "B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split(),
    "stop": "B D G K P T".split(),
    "voiced_stop": "B D G".split(),
    "fricative": "DH F HH S SH TH V Z ZH".split(),
    "sibilant": "S SH Z ZH CH JH".split(),
    "affricate": "CH JH".split(),
    "nasal": "M N NG".split(),
    "liquid": "L R".split(),
    "glide": "W Y".split(),
    "voiced_consonant": "B D G DH V Z ZH JH M N NG L R W Y".split(),
    "labial": "B P M F V W".split(),
    "alveolar": "D T N S Z L R".split(),
    "velar": "G K NG".split(),
    "dental": "DH TH".split(),
    "postalveolar": "SH ZH CH JH".split(),
}


def base_of(phone: str) -> str:
    """AH1_B -> AH (position suffix and stress stripped)."""
    if phone[-2:] in ("_B", "_E", "_I", "_S"):
        phone = phone[:-2]
    return phone.rstrip("012")


def _ids_by_base(phone_ids: dict[str, int]) -> dict[str, set[int]]:
    """Phone ids grouped by base phone (AH -> the ids of AH0_B, AH1_I, ...); no <eps>, no #k."""
    ids_by_base: dict[str, set[int]] = {}
    for name, i in phone_ids.items():
        if not name.startswith("#") and name != "<eps>":
            ids_by_base.setdefault(base_of(name), set()).add(i)
    return ids_by_base


def arpabet_class_questions(phone_ids: dict[str, int]) -> set[frozenset[int]]:
    """One question per ARPAbet phonetic class present in the phone set."""
    ids_by_base = _ids_by_base(phone_ids)
    classes = (set().union(*(ids_by_base.get(m, set()) for m in members)) for members in ARPABET_CLASSES.values())
    return {frozenset(ids) for ids in classes if ids}


def context_questions(phone_ids: dict[str, int], silence: set[str]) -> list[frozenset[int]]:
    """ARPAbet questions: phonetic classes, plus single phones, word positions, silence."""
    questions = position_and_edge_questions(phone_ids, silence) | arpabet_class_questions(phone_ids)
    return sorted(questions, key=lambda q: (len(q), sorted(q)))


def position_and_edge_questions(phone_ids: dict[str, int], silence: set[str]) -> set[frozenset[int]]:
    """One question per phone set (all its variants), per word position, and silence-or-edge."""
    questions = {frozenset(ids) for ids in _ids_by_base(phone_ids).values()}
    for suffix in ("_B", "_E", "_I", "_S"):
        ids = {i for name, i in phone_ids.items() if name.endswith(suffix)}
        if ids:
            questions.add(frozenset(ids))
    sil = {i for name, i in phone_ids.items() if base_of(name) in silence}
    questions.add(frozenset(sil | {0}))  # silence or the utterance edge
    questions.add(frozenset({0}))
    return questions


def cluster_phone_questions(
    stats: dict, root_sets: list[list[int]], pdf_classes: tuple[int, ...] = (0, 1, 2), var_floor: float = 1e-3
) -> list[frozenset[int]]:
    """Questions by top-down binary clustering of the root sets (the idea of Kaldi's cluster-phones).

    Each root set is described by its pooled Gaussian statistics per pdf class
    (all contexts). A cluster is split in two by likelihood: start from the
    split at the median of the members' projections on their principal
    direction, then move single members across while the summed log-likelihood
    of the two halves' Gaussians rises. Every cluster of the resulting binary
    tree, from the whole inventory down to single sets, is a question.
    """
    phone_root = {p: r for r, phones in enumerate(root_sets) for p in phones}
    pooled: dict[int, dict[int, np.ndarray]] = {}
    for (_, phone, _, pdf_class), st in stats.items():
        if pdf_class in pdf_classes and phone in phone_root:
            per_class = pooled.setdefault(phone_root[phone], {})
            per_class[pdf_class] = per_class.get(pdf_class, 0) + st
    items = sorted(pooled)
    if not items:
        return []
    dim = len(next(iter(stats.values())))
    table = np.zeros((len(items), len(pdf_classes), dim))
    for i, r in enumerate(items):
        for j, c in enumerate(pdf_classes):
            if c in pooled[r]:
                table[i, j] = pooled[r][c]

    def objective(members) -> float:
        total = table[list(members)].sum(0)
        return sum(gaussian_loglike(total[j], var_floor) for j in range(len(pdf_classes)))

    def split(members: list[int]) -> tuple[list[int], list[int]]:
        d = (dim - 1) // 2
        counts = np.maximum(table[members, :, 0:1], 1e-10)
        means = (table[members, :, 1 : 1 + d] / counts).reshape(len(members), -1)
        centred = means - means.mean(0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0] if len(members) > 2 else centred[0]
        projection = centred @ direction
        order = [members[k] for k in np.argsort(projection, kind="stable")]
        a, b = set(order[: len(order) // 2]), set(order[len(order) // 2 :])
        current = objective(a) + objective(b)
        for _ in range(50):  # move members one at a time while it helps
            moved = False
            for m in members:
                src, dst = (a, b) if m in a else (b, a)
                if len(src) == 1:
                    continue
                gain = objective(src - {m}) + objective(dst | {m}) - current
                if gain > 1e-9 * max(1.0, abs(current)):
                    src.remove(m)
                    dst.add(m)
                    current += gain
                    moved = True
            if not moved:
                break
        return sorted(a), sorted(b)

    questions: list[frozenset[int]] = []
    pending = [list(range(len(items)))]
    while pending:
        members = pending.pop()
        questions.append(frozenset(p for k in members for p in root_sets[items[k]]))
        if len(members) > 1:
            pending.extend(split(members))
    return questions


def make_questions(
    kind: str, phone_ids: dict[str, int], silence: set[str], stats: dict, root_sets: list[list[int]]
) -> list[frozenset[int]]:
    """The question set for ``kind`` in auto / arpabet / both (see the module docstring)."""
    if kind not in ("auto", "arpabet", "both"):
        raise ValueError(f"tree questions must be auto, arpabet or both, not {kind!r}")
    questions = position_and_edge_questions(phone_ids, silence)
    if kind in ("arpabet", "both"):
        questions |= arpabet_class_questions(phone_ids)
    if kind in ("auto", "both"):
        questions |= set(cluster_phone_questions(stats, root_sets))
    return sorted(questions, key=lambda q: (len(q), sorted(q)))


# --- statistics -----------------------------------------------------------------


def gaussian_loglike(stats: np.ndarray, var_floor: float) -> float:
    """Log-likelihood of the frames summarised by [count, sum(D), sumsq(D)] under their own diagonal Gaussian."""
    count = stats[0]
    if count <= 0:
        return 0.0
    d = (len(stats) - 1) // 2
    mean = stats[1 : 1 + d] / count
    var = np.maximum(stats[1 + d :] / count - mean**2, var_floor)
    return float(-0.5 * count * (d * math.log(2 * math.pi) + np.log(var).sum() + d))


def accumulate_tree_stats(
    utterances, tid_phone: np.ndarray, tid_pdf_class: np.ndarray, tid_starts_phone: np.ndarray
) -> dict:
    """{(left, phone, right, pdf_class): [count, sum, sumsq]} from (transition-id alignment, features) pairs,
    one utterance at a time (the statistics grow with the contexts seen, not with the corpus).

    The ``tid_*`` arrays map a transition id to its phone, its HMM state's pdf
    class and whether a new phone instance starts with it. The left/right
    context of an instance is its neighbour's phone (0 at the utterance edges, as in Kaldi).
    """

    def instances():
        for tids, feats in utterances:
            x, tids = np.asarray(feats, dtype=np.float64), np.asarray(tids)
            yield [
                (left, phone, right, tid_pdf_class[tids[b:e]], x[b:e])
                for left, phone, right, b, e in phone_instances(tids, tid_phone, tid_starts_phone)
            ]

    return accumulate_instance_stats(instances())


def accumulate_instance_stats(utterances) -> dict:
    """The statistics of :func:`accumulate_tree_stats` from each utterance's phone instances, given as
    (left, phone, right, the pdf class of each frame, the frames' features, ...)."""
    stats: dict[tuple[int, int, int, int], np.ndarray] = {}
    for found in utterances:
        for left, phone, right, classes, frames_of, *_ in found:
            frames_of = np.asarray(frames_of, dtype=np.float64)
            for c in np.unique(classes):
                frames = frames_of[classes == c]
                key = (left, phone, right, int(c))
                acc = stats.get(key)
                if acc is None:
                    acc = stats[key] = np.zeros(1 + 2 * frames.shape[1])
                dim = frames.shape[1]
                acc[0] += len(frames)
                acc[1 : 1 + dim] += frames.sum(0)
                acc[1 + dim :] += (frames**2).sum(0)
    return stats


# --- the tree -------------------------------------------------------------------


@dataclass
class Leaf:
    events: list[tuple[int, int, int, np.ndarray]]  # (left, phone, right, stats)
    pdf: int = -1
    tied_to: "Leaf | None" = None  # the leaf whose pdf this one shares

    def total(self) -> np.ndarray:
        return np.sum([e[3] for e in self.events], axis=0)


@dataclass
class Split:
    key: int  # LEFT, CENTER or RIGHT
    yes_set: frozenset[int]
    yes: "Node"
    no: "Node"


Node = Union[Leaf, Split]
_POSITION = {LEFT: 0, CENTER: 1, RIGHT: 2}


@dataclass
class SenoneTree:
    """Per (root phone set, pdf class) a subtree of questions; leaves numbered as pdfs.

    The phones of a root set (Kaldi's phones/roots.txt: e.g. AH0 AH1 AH2 in
    every word position) share one subtree per pdf class, so their data pool;
    questions about the central phone can tell them apart again.
    """

    roots: dict[tuple[int, int], Node] = field(default_factory=dict)  # (root index, pdf class) -> node
    num_pdf_classes: dict[int, int] = field(default_factory=dict)  # phone -> number of pdf classes
    phone_root: dict[int, int] = field(default_factory=dict)  # phone -> root index
    gain_per_frame: float = 0.0  # log-likelihood gain of the splits over the frames of the statistics

    def leaves(self) -> list[Leaf]:
        out: list[Leaf] = []

        def walk(n: Node):
            if isinstance(n, Leaf):
                out.append(n)
            else:
                walk(n.yes)
                walk(n.no)

        for key in sorted(self.roots):
            walk(self.roots[key])
        return out

    def number_pdfs(self) -> int:
        own = [leaf for leaf in self.leaves() if leaf.tied_to is None]
        for i, leaf in enumerate(own):
            leaf.pdf = i
        for leaf in self.leaves():
            if leaf.tied_to is not None:
                leaf.pdf = leaf.tied_to.pdf
        return len(own)

    def classes_of_pdf(self) -> dict[tuple[int, int], list[int]]:
        """(phone, pdf) -> the phone's pdf classes that have that pdf in some context, ascending."""
        out: dict[tuple[int, int], set[int]] = {}

        def walk(n: Node, phone: int, c: int):
            if isinstance(n, Leaf):
                out.setdefault((phone, n.pdf), set()).add(c)
            elif n.key == CENTER:
                walk(n.yes if phone in n.yes_set else n.no, phone, c)
            else:
                walk(n.yes, phone, c)
                walk(n.no, phone, c)

        for phone, n in self.num_pdf_classes.items():
            for c in range(n):
                walk(self.node_for(phone, c), phone, c)
        return {k: sorted(v) for k, v in out.items()}

    def node_for(self, phone: int, pdf_class: int) -> Node:
        return self.roots[(self.phone_root.get(phone, phone), pdf_class)]

    def pdf(self, left: int, phone: int, right: int, pdf_class: int) -> int:
        node = self.node_for(phone, pdf_class)
        context = (left, phone, right)
        while isinstance(node, Split):
            node = node.yes if context[_POSITION[node.key]] in node.yes_set else node.no
        return node.pdf


def _best_split(leaf: Leaf, questions: list[frozenset[int]], keys: tuple[int, ...], min_count: float, var_floor: float):
    total = leaf.total()
    parent = gaussian_loglike(total, var_floor)
    best = (0.0, None, None)
    for key in keys:
        pos = _POSITION[key]
        by_value: dict[int, np.ndarray] = {}
        for ev in leaf.events:
            by_value[ev[pos]] = by_value.get(ev[pos], 0) + ev[3]
        if len(by_value) < 2:
            continue
        seen: set[frozenset[int]] = set()
        for q in questions:
            yes_values = frozenset(v for v in by_value if v in q)
            if not yes_values or len(yes_values) == len(by_value) or yes_values in seen:
                continue
            seen.add(yes_values)
            y = np.sum([by_value[v] for v in yes_values], axis=0)
            n = total - y
            if y[0] < min_count or n[0] < min_count:
                continue
            gain = gaussian_loglike(y, var_floor) + gaussian_loglike(n, var_floor) - parent
            if gain > best[0]:
                best = (gain, key, q)
    return best


def build_tree(
    stats: dict,
    num_pdf_classes: dict[int, int],
    questions: list[frozenset[int]],
    context_independent: set[int],
    num_leaves: int,
    min_count: float = 100.0,
    var_floor: float = 1e-3,
    root_sets: list[list[int]] | None = None,
) -> SenoneTree:
    """Greedy likelihood-gain splitting from one leaf per (root set, pdf class) to ``num_leaves``.

    ``root_sets`` default to one set per phone. Context-independent phones
    (silence) are only split on the central phone, never on their neighbours.
    """
    root_sets = root_sets or [[p] for p in sorted(num_pdf_classes)]
    tree = SenoneTree(num_pdf_classes=dict(num_pdf_classes))
    for r, phones in enumerate(root_sets):
        classes = {num_pdf_classes[p] for p in phones}
        if len(classes) != 1:
            raise ValueError(f"phones {phones} share a tree root but have different numbers of pdf classes")
        for p in phones:
            tree.phone_root[p] = r
    events: dict[tuple[int, int], list] = {}
    for (left, phone, right, pdf_class), st in stats.items():
        events.setdefault((tree.phone_root[phone], pdf_class), []).append((left, phone, right, st))
    for r, phones in enumerate(root_sets):
        for c in range(num_pdf_classes[phones[0]]):
            tree.roots[(r, c)] = Leaf(events.get((r, c), []))

    heap: list = []
    counter = 0

    def consider(leaf: Leaf, root: int, attach):
        """Queue the leaf's best split; ``attach(node)`` puts a node where the leaf is."""
        nonlocal counter
        if not leaf.events:
            return
        ci = all(p in context_independent for p in root_sets[root])
        keys = (CENTER,) if ci else (LEFT, RIGHT, CENTER)
        gain, key, q = _best_split(leaf, questions, keys, min_count, var_floor)
        if key is not None:
            heapq.heappush(heap, (-gain, counter, root, leaf, key, q, attach))
            counter += 1

    for k, leaf in tree.roots.items():
        consider(leaf, k[0], lambda node, k=k: tree.roots.__setitem__(k, node))
    leaves = len(tree.roots)
    total_gain = 0.0
    if num_leaves < leaves:
        total_gain = -_tie_states(tree, len(root_sets), leaves - num_leaves, var_floor)
        leaves = num_leaves
    while heap and leaves < num_leaves:
        neg_gain, _, root, leaf, key, q, attach = heapq.heappop(heap)
        pos = _POSITION[key]
        split = Split(
            key, q, Leaf([e for e in leaf.events if e[pos] in q]), Leaf([e for e in leaf.events if e[pos] not in q])
        )
        attach(split)
        leaves += 1
        total_gain -= neg_gain
        consider(split.yes, root, lambda node, s=split: setattr(s, "yes", node))
        consider(split.no, root, lambda node, s=split: setattr(s, "no", node))
    tree.number_pdfs()
    frames = sum(st[0] for st in stats.values())
    tree.gain_per_frame = total_gain / max(1.0, frames)
    log.info(
        "tree: %d leaves from %d (root, state) pairs, likelihood gain %.1f over %d frames (%.3f per frame)",
        leaves,
        len(tree.roots),
        total_gain,
        int(frames),
        tree.gain_per_frame,
    )
    return tree


def _tie_states(tree: SenoneTree, num_roots: int, merges: int, var_floor: float) -> float:
    """Ties ``merges`` times the two clusters of leaves of one root set whose merge loses the least
    likelihood (they share the first one's pdf); returns the total loss."""
    clusters = {
        r: [[leaf] for (root, _), leaf in sorted(tree.roots.items()) if root == r and isinstance(leaf, Leaf)]
        for r in range(num_roots)
    }

    def loglike(cluster: list[Leaf]) -> float:
        stats = [leaf.total() for leaf in cluster if leaf.events]
        return gaussian_loglike(np.sum(stats, axis=0), var_floor) if stats else 0.0

    loss = 0.0
    for _ in range(merges):
        best = None
        for r, cs in clusters.items():
            for i in range(len(cs)):
                for j in range(i + 1, len(cs)):
                    cost = loglike(cs[i]) + loglike(cs[j]) - loglike(cs[i] + cs[j])
                    if best is None or cost < best[0]:
                        best = (cost, r, i, j)
        if best is None:
            raise ValueError(
                f"num_leaves is below the number of root sets ({num_roots}): states of different "
                "root sets cannot share a pdf"
            )
        cost, r, i, j = best
        cs = clusters[r]
        for leaf in cs[j]:
            leaf.tied_to = cs[i][0]
        cs[i] += cs.pop(j)
        loss += cost
    return loss


# --- Kaldi's binary format --------------------------------------------------------


def _token(s: str) -> bytes:
    return s.encode() + b" "


def _int32(v: int) -> bytes:
    return b"\x04" + struct.pack("<i", v)


def _uint32(v: int) -> bytes:
    return b"\xfc" + struct.pack("<I", v)  # Kaldi writes -sizeof for unsigned types


def _int_vector(values: list[int]) -> bytes:
    return b"\x04" + struct.pack("<i", len(values)) + struct.pack(f"<{len(values)}i", *values)


def _node_bytes(node: Node) -> bytes:
    if isinstance(node, Leaf):
        return _token("CE") + _int32(node.pdf)
    return (
        _token("SE")
        + _int32(node.key)
        + _int_vector(sorted(node.yes_set))
        + _token("{")
        + _node_bytes(node.yes)
        + _node_bytes(node.no)
        + _token("}")
    )


def kaldi_tree_bytes(tree: SenoneTree, context_width: int = 3, central_position: int = 1) -> bytes:
    """Kaldi's binary ContextDependency (without the \\0B binary header): TE on the phone, TE on the pdf class."""
    max_phone = max(tree.num_pdf_classes)
    table = []
    for phone in range(max_phone + 1):
        if phone not in tree.num_pdf_classes:
            table.append(_token("NULL"))
            continue
        n = tree.num_pdf_classes[phone]
        inner = b"".join(_node_bytes(tree.node_for(phone, c)) for c in range(n))
        table.append(_token("TE") + _int32(PDF_CLASS) + _uint32(n) + _token("(") + inner + _token(")"))
    event_map = (
        _token("TE") + _int32(central_position) + _uint32(max_phone + 1) + _token("(") + b"".join(table) + _token(")")
    )
    return (
        _token("ContextDependency")
        + _int32(context_width)
        + _int32(central_position)
        + _token("ToPdf")
        + event_map
        + _token("EndContextDependency")
    )


def load_context_dependency(data: bytes):
    """A kaldi-hmm-gmm ContextDependency from Kaldi's binary tree bytes (through its pickle hook)."""
    tree = khg.ContextDependency.__new__(khg.ContextDependency)
    tree.__setstate__(([b if b < 128 else b - 256 for b in data],))
    return tree


# --- alignments for the new model ------------------------------------------------------


def tid_converter(old_tm, new_tm, classes_of_pdf: dict[tuple[int, int], list[int]]):
    """Kaldi's convert-ali for the same topology: (old transition id, phone, pdf class, new pdf) -> the new
    model's transition id.

    A transition id is a transition state (phone, HMM state, pdfs) plus the
    index of the transition out of that HMM state; the index carries over, the
    transition state is the new model's one for the same phone, HMM state and
    new pdf. Kaldi numbers a phone's transition states by (HMM state, pdf), so
    among the states of (phone, pdf) the k-th is the HMM state of the k-th of
    ``classes_of_pdf[(phone, pdf)]``, the pdf classes of that phone that may
    have that pdf (several where states are tied; HMM state = pdf class in
    Kaldi's standard topologies).
    """
    by_phone_pdf: dict[tuple[int, int], list[int]] = {}
    first = new_tm.state2id
    for state in range(1, new_tm.num_transition_states + 1):
        tids = range(first[state], first[state + 1])
        pdfs = {new_tm.transition_id_to_pdf(t) for t in tids}
        if len(pdfs) != 1:
            raise ValueError(
                "alignment conversion needs topologies whose self-loops share their state's pdf (Kaldi's standard ones)"
            )
        by_phone_pdf.setdefault((new_tm.transition_id_to_phone(tids[0]), pdfs.pop()), []).append(state)
    for key, states in by_phone_pdf.items():
        if len(states) != len(classes_of_pdf[key]):
            raise ValueError(
                "alignment conversion needs topologies where one pdf class belongs to one HMM state "
                "(Kaldi's standard ones)"
            )
    old_first, old_state = old_tm.state2id, old_tm.id2state

    def convert(tid: int, phone: int, pdf_class: int, new_pdf: int) -> int:
        index = tid - old_first[old_state[tid]]
        k = classes_of_pdf[(phone, new_pdf)].index(pdf_class)
        return first[by_phone_pdf[(phone, new_pdf)][k]] + index

    return convert


# --- chain models: their topology and frame rate -------------------------------------


def chain_topology(phones: list[int]) -> str:
    """Kaldi chain's HMM topology (steps/nnet3/chain/gen_topo.py) for every phone: one emitting state whose
    forward transition and self-loop have their own pdf classes, so a phone takes one frame or more and its
    first frame has its own pdf (Povey et al. 2016, section 2.4)."""
    return (
        "<Topology>\n<TopologyEntry>\n<ForPhones>\n" + " ".join(str(p) for p in sorted(phones)) + "\n</ForPhones>\n"
        "<State> 0 <ForwardPdfClass> 0 <SelfLoopPdfClass> 1 <Transition> 0 0.5 <Transition> 1 0.5 </State>\n"
        "<State> 1 </State>\n</TopologyEntry>\n</Topology>\n"
    )


def subsampled_spans(spans: list[tuple[int, int]], num_frames: int, factor: int) -> list[tuple[int, int]] | None:
    """Phone spans [begin, end) of an alignment at 1/``factor`` of its frame rate (frame t' is input frame
    t' x factor; ceil(num_frames / factor) frames), every phone keeping at least one frame; None where the
    utterance has more phones than frames at that rate. As Kaldi's convert-ali --frame-subsampling-factor:
    the boundaries rounded, then moved apart where phones would vanish."""
    total = -(-num_frames // factor)
    bounds = [0] + [round(b / factor) for b, _ in spans[1:]] + [total]
    for k in range(1, len(bounds)):
        bounds[k] = max(bounds[k], bounds[k - 1] + 1)
    bounds[-1] = total
    for k in range(len(bounds) - 2, 0, -1):
        bounds[k] = min(bounds[k], bounds[k + 1] - 1)
    if any(e <= b for b, e in zip(bounds, bounds[1:])):
        return None
    return list(zip(bounds, bounds[1:]))


def _chain_tids(trans_model) -> dict[tuple[int, int, int], tuple[int, int]]:
    """(phone, forward pdf, self-loop pdf) -> (forward transition id, self-loop transition id) of a model with
    the chain topology."""
    out = {}
    first = trans_model.state2id
    for state in range(1, trans_model.num_transition_states + 1):
        forward = loop = None
        for t in range(first[state], first[state + 1]):
            if trans_model.is_self_loop(t):
                loop = t
            else:
                forward = t
        phone = trans_model.transition_id_to_phone(forward)
        key = (phone, trans_model.transition_id_to_pdf(forward), trans_model.transition_id_to_pdf(loop))
        out[key] = (forward, loop)
    return out


# --- stage 5 -----------------------------------------------------------------------


def build_senone_tree(
    cuts_path,
    lang_dir,
    ci_dir,
    out_dir,
    cmvn_ark,
    num_leaves: int = 500,
    min_count: float = 100.0,
    questions: str = "auto",
    topology: str = "lang",
    frame_subsampling_factor: int = 1,
) -> dict:
    """Tree from ``ci_dir/ali.ark`` (stage 4); writes tree, trans.pkl, topo, ali.ark and ali_pdf.ark into ``out_dir``.

    ``ali.ark`` holds the flat-start alignments converted to the new model's
    transition ids (Kaldi's convert-ali), ``ali_pdf.ark`` their senones.
    With ``topology="chain"`` (a chain model's tree, Kaldi's steps/nnet3/chain/build_tree.sh) the model has
    :func:`chain_topology` and every statistic and alignment is at 1/``frame_subsampling_factor`` of the
    frame rate (features subsampled, phone spans by :func:`subsampled_spans`).
    """

    cuts_path, lang_dir, ci_dir, out_dir = map(Path, (cuts_path, lang_dir, ci_dir, out_dir))
    if topology not in ("lang", "chain"):
        raise ValueError(f"topology '{topology}': lang or chain")
    if frame_subsampling_factor < 1 or (topology == "lang" and frame_subsampling_factor != 1):
        raise ValueError(f"frame_subsampling_factor {frame_subsampling_factor}: 1, or >= 1 with the chain topology")
    chain = topology == "chain"
    factor = frame_subsampling_factor
    ci_tree, ci_tm = load_model(ci_dir)
    lang_topo_text = read_topo(lang_dir)
    lang_topo = khg.HmmTopology()
    lang_topo.read(lang_topo_text)
    topo_text, topo = lang_topo_text, lang_topo
    if chain:
        topo_text, topo = chain_topology(list(lang_topo.phones)), khg.HmmTopology()
        topo.read(topo_text)
    num_classes = {p: topo.num_pdf_classes(p) for p in topo.phones}

    num_tids = ci_tm.num_transition_ids
    ci_classes = {p: lang_topo.num_pdf_classes(p) for p in lang_topo.phones}
    pdf_pairs = ci_tree.get_pdf_info(
        list(lang_topo.phones), [0] + [ci_classes.get(p, 0) for p in range(1, max(lang_topo.phones) + 1)]
    )
    tid_phone, tid_start = transition_arrays(ci_tm)
    tid_class = np.zeros(num_tids + 1, dtype=np.int64)
    for t in range(1, num_tids + 1):
        tid_class[t] = pdf_pairs[ci_tm.transition_id_to_pdf(t)][0][1]

    mean, std = global_mean_std(Path(cmvn_ark))
    alignments = AlignmentTable(ci_dir / "ali.ark")
    cuts = load_cuts(cuts_path)  # lazy: read from disk as it is iterated
    skipped: list[str] = []

    def instances(tids, feats):
        """Per phone instance: (left, phone, right, pdf class of each frame, its features, its old transition
        ids or None), at the tree's frame rate; None for an utterance too short for it."""
        found = phone_instances(tids, tid_phone, tid_start)
        if not chain:
            return [(l_, p, r, tid_class[tids[b:e]], feats[b:e], tids[b:e]) for l_, p, r, b, e in found]
        spans = subsampled_spans([(b, e) for *_, b, e in found], len(tids), factor)
        if spans is None:
            return None
        x = feats[: len(tids)][::factor]
        out = []
        for (l_, p, r, _, _), (b, e) in zip(found, spans):
            classes = np.ones(e - b, dtype=np.int64)
            classes[0] = 0  # the first frame is the forward transition's (Kaldi's reordered HMMs)
            out.append((l_, p, r, classes, x[b:e], None))
        return out

    def aligned():  # (cut, its phone instances), streamed from disk in the cuts' order: one utterance at a time
        for cut in cuts:
            if cut.id in alignments:
                found = instances(np.asarray(alignments[cut.id]), (cut.load_features() - mean) / std)
                if found is None:
                    skipped.append(cut.id)
                    continue
                yield cut, found

    stats = accumulate_instance_stats(found for _, found in aligned())
    if skipped:
        log.warning(
            "tree: %d utterances have more phones than frames at 1/%d of the frame rate, left out (e.g. %s)",
            len(skipped),
            factor,
            skipped[0],
        )

    phone_ids = read_symbol_table(lang_dir / "phones.txt")
    silence = {base_of(p) for p in (lang_dir / "phones" / "silence.txt").read_text().split()}
    ci_phones = set(read_int_list(lang_dir / "phones" / "context_indep.int"))
    root_sets = [
        [int(x) for x in line.split()[2:]]
        for line in (lang_dir / "phones" / "roots.int").read_text().splitlines()
        if line.strip()
    ]
    question_sets = make_questions(questions, phone_ids, silence, stats, root_sets)
    log.info("tree: %d questions (%s)", len(question_sets), questions)
    tree = build_tree(stats, num_classes, question_sets, ci_phones, num_leaves, min_count, root_sets=root_sets)
    ctx_dep = load_context_dependency(kaldi_tree_bytes(tree))
    trans_model = khg.TransitionModel(ctx_dep=ctx_dep, hmm_topo=topo)
    save_model(out_dir, topo_text, ctx_dep, trans_model)

    if chain:
        chain_tids = _chain_tids(trans_model)
    else:
        convert = tid_converter(ci_tm, trans_model, tree.classes_of_pdf())
    num_utts = 0
    skipped.clear()
    with (
        alignment_table_writer(out_dir / "ali_pdf.ark") as write_pdfs,
        alignment_table_writer(out_dir / "ali.ark") as write_tids,
    ):
        for cut, found in aligned():
            pdfs, new_tids = [], []
            for left, phone, right, classes, _, old_tids in found:
                if chain:
                    forward, loop = tree.pdf(left, phone, right, 0), tree.pdf(left, phone, right, 1)
                    first_tid, loop_tid = chain_tids[(phone, forward, loop)]
                    pdfs += [forward] + [loop] * (len(classes) - 1)
                    new_tids += [first_tid] + [loop_tid] * (len(classes) - 1)
                    continue
                for tid, c in zip(old_tids, classes):
                    pdf = tree.pdf(left, phone, right, int(c))
                    pdfs.append(pdf)
                    new_tids.append(convert(int(tid), phone, int(c), pdf))
            write_pdfs(cut.id, pdfs)
            write_tids(cut.id, new_tids)
            num_utts += 1
    alignments.close()
    summary = {
        "leaves": len({leaf.pdf for leaf in tree.leaves()}),
        "num_pdfs": trans_model.num_pdfs,
        "events": len(stats),
        "questions": questions,
        "num_questions": len(question_sets),
        "likelihood_gain_per_frame": round(float(tree.gain_per_frame), 4),
        "frames": int(sum(s[0] for s in stats.values())),
        "utterances": num_utts,
    }
    if chain:
        summary.update(topology="chain", frame_subsampling_factor=factor, too_short=len(skipped))
    write_text_atomic(out_dir / "tree.json", json.dumps(summary, indent=1) + "\n")
    return summary
