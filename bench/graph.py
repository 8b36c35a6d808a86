"""HCLG build time and size for 200, 1,000 and 5,000-word vocabularies with a bigram G.

Prints JSON. Words are drawn from CMUdict (every k-th entry of its sorted
word list, alphabetic words only), a Zipf-distributed random text of 20
sentences per word trains a bigram with lmplz, and the monophone HCLG is built
with asrhybrid.graph.mkgraph (position-dependent phones, stress kept). For each
size: states and arcs of L, G and HCLG, the seconds of each step, and the
HCLG figures per 1,000 words. Issue 3 quotes, for the bare libraries,
24.6k states in 0.4-0.8 s and 122k states in about 6 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5000])
    args = parser.parse_args()

    from asrhybrid.graph.mkgraph import count_arcs, make_hclg
    from asrhybrid.hmm import init_mono_model
    from asrhybrid.kaldi_wrappers import kaldifst
    from asrhybrid.lang.lexicon import _cmudict, corpus_dict_dir
    from asrhybrid.lang.prepare_lang import prepare_lang
    from asrhybrid.lm.train import arpa_to_g, train_lm

    candidates = sorted(w.upper() for w in _cmudict() if w.isalpha())
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            words = candidates[:: len(candidates) // size][:size]
            rng = np.random.default_rng(size)
            ranks = rng.zipf(1.3, size=(20 * size, 10)) % size
            sentences = [" ".join(words[r] for r in row) for row in ranks] + words

            t0 = time.perf_counter()
            corpus_dict_dir(tmp / "dict", set(words))
            lang = prepare_lang(tmp / "dict", tmp / "lang", "<UNK>")
            t1 = time.perf_counter()
            lm = train_lm(sentences, tmp / "lm", "bg", 2)
            G = arpa_to_g(Path(lm["arpa"]), lang / "words.txt", lang / "G.fst")
            t2 = time.perf_counter()
            tree, trans_model = init_mono_model(lang, tmp / "mono")
            start = time.perf_counter()
            HCLG = make_hclg(lang, G, tree, trans_model)
            hclg_seconds = time.perf_counter() - start
            L = kaldifst.StdVectorFst.read(str(lang / "L_disambig.fst"))
            results.append(
                {
                    "words": size,
                    "lexicon_entries": sum(1 for _ in open(tmp / "dict" / "lexicon.txt")),
                    "L_states": L.num_states,
                    "G_states": G.num_states,
                    "G_arcs": count_arcs(G),
                    "HCLG_states": HCLG.num_states,
                    "HCLG_arcs": count_arcs(HCLG),
                    "prepare_lang_s": round(t1 - t0, 3),
                    "lm_and_G_s": round(t2 - t1, 3),
                    "HCLG_build_s": round(hclg_seconds, 3),
                    "HCLG_states_per_s": round(HCLG.num_states / hclg_seconds),
                }
            )
    print(json.dumps({"bigram_hclg": results}, indent=1))


if __name__ == "__main__":
    main()
