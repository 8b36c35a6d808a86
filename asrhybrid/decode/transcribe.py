"""``asrhybrid transcribe``: audio in, words out, with a trained system (icefall's pretrained.py for a hybrid model).

The pieces of the recipe, in one call: the audio is read (any format
Lhotse reads) and resampled to the recipe's rate; fbank features with the
options stage 1 used (recorded in its completion marker); the training
data's global CMVN (kept in final.pt); the network and its priors; k2
lattice decoding over the graph; optionally LM rescoring of the lattice
(Kaldi's lmrescore: first-pass LM out, new one in); the best path at LM
weight 1/acwt. A long file is cut into segments of at most
``max_segment`` seconds at its quietest moments near each limit, decoded
one by one, and its words joined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from lhotse import Recording, load_manifest

from asrhybrid.data.kaldi_data_dir import read_table
from asrhybrid.decode.decoder import DecodeConfig, decode_batch
from asrhybrid.decode.rescore import K2LanguageModel, open_lm, rescore_lattice
from asrhybrid.errors import DataError
from asrhybrid.features.fbank import KaldiFbank
from asrhybrid.features.layout import fbank_config
from asrhybrid.graph.k2graph import DecodingGraph
from asrhybrid.lm.train import arpa_to_g
from asrhybrid.nnet.inference import load_am
from asrhybrid.nnet.priors import scaled_loglikes

log = logging.getLogger(__name__)


@dataclass
class AudioItem:
    utt: str
    samples: np.ndarray  # mono, at the recipe's rate
    sample_rate: int


def iter_audio(sources: list[Path], sample_rate: int) -> Iterator[AudioItem]:
    """Audio files, ``wav.scp`` files (``utt path``) or cuts manifests, as mono audio at ``sample_rate``."""
    for source in sources:
        source = Path(source)
        if not source.exists():
            raise DataError([f"{source}: no such file"])
        if source.name.endswith((".jsonl.gz", ".jsonl", ".json")):
            for cut in load_manifest(source):
                cut = cut.resample(sample_rate) if cut.sampling_rate != sample_rate else cut
                yield AudioItem(cut.id, cut.load_audio()[0], sample_rate)
            continue
        if source.name == "wav.scp" or source.suffix == ".scp":
            problems: list[str] = []
            table = read_table(source, 1, problems)
            problems += [
                f"{source}:{n}: '{' '.join(rest)}': one audio file expected (commands ending in | are not read)"
                for rest, n in table.values()
                if len(rest) != 1 or rest[0].endswith("|")
            ]
            if problems:
                raise DataError(problems, str(source))
            pairs = [(utt, Path(rest[0])) for utt, (rest, _) in table.items()]
        else:
            pairs = [(source.stem, source)]
        for utt, path in pairs:
            try:
                recording = Recording.from_file(path, recording_id=utt)
            except Exception as e:  # noqa: BLE001 (any decoder failure is the file's problem)
                raise DataError([f"{path}: not readable audio ({e})"]) from None
            if recording.sampling_rate != sample_rate:
                log.info("%s: resampling %d Hz to %d Hz", path, recording.sampling_rate, sample_rate)
                recording = recording.resample(sample_rate)
            audio = recording.load_audio()
            yield AudioItem(utt, audio.mean(axis=0) if audio.shape[0] > 1 else audio[0], sample_rate)


def segments(samples: np.ndarray, sample_rate: int, max_segment: float) -> list[tuple[int, int]]:
    """(start, end) sample ranges of at most ``max_segment`` seconds, cut at the quietest 10 ms frame of the
    last quarter before each limit."""
    limit = int(max_segment * sample_rate)
    if len(samples) <= limit:
        return [(0, len(samples))]
    hop = max(1, sample_rate // 100)
    out, start = [], 0
    while len(samples) - start > limit:
        window = samples[start + 3 * limit // 4 : start + limit]
        frames = len(window) // hop
        energy = (window[: frames * hop].reshape(frames, hop) ** 2).sum(axis=1)
        cut = start + 3 * limit // 4 + int(np.argmin(energy)) * hop + hop // 2
        out.append((start, cut))
        start = cut
    out.append((start, len(samples)))
    return out


def transcribe(
    exp_dir: Path | str,
    sources: list[Path],
    graph_dir: Path | str | None = None,
    new_lm: Path | str | None = None,
    old_lm: Path | str | None = None,
    cfg=None,
    max_segment: float = 30.0,
    device: str = "cpu",
) -> Iterator[tuple[str, str]]:
    """(utt, words) per input utterance (see the module's doc)."""
    exp_dir = Path(exp_dir)
    workdir = exp_dir.parent.parent
    graph_dir = Path(graph_dir) if graph_dir else workdir / "exp" / "tree" / "graph_small"
    cfg = cfg or DecodeConfig()
    model, trained = load_am(exp_dir, device)
    if trained.adaptation:
        raise DataError(
            [
                f"{exp_dir}: a speaker-adapted system (adapt-am) holds transforms for the speakers of one "
                f"set only; transcribe with its base system ({trained.adaptation.get('base')})"
            ]
        )
    graph = DecodingGraph.load(graph_dir)
    if trained.num_outputs != graph.num_pdfs:
        raise DataError([f"{exp_dir}: {trained.num_outputs} pdfs, the graph {graph_dir} has {graph.num_pdfs}"])
    fbank_cfg = fbank_config(workdir / "data" / "fbank")
    extractor = KaldiFbank(fbank_cfg)
    rescorer = None
    if new_lm is not None:
        words = graph.words
        old = open_lm(old_lm or workdir / "data" / "lm" / "small.arpa", words)
        g_fst = Path(new_lm)
        if g_fst.suffix == ".arpa":
            g_fst = graph_dir / f"G_{Path(new_lm).stem}.fst"
            if not g_fst.is_file():
                arpa_to_g(Path(new_lm), graph_dir / "words.txt", g_fst)
        new_k2 = K2LanguageModel.from_g_fst(g_fst, words)
        rescorer = lambda lat: rescore_lattice(lat, old, new_k2)  # noqa: E731
    normalizer = trained.normalizer()  # speaker CMVN: each segment is its own speaker
    for item in iter_audio(sources, fbank_cfg.sampling_rate):
        words: list[str] = []
        for a, b in segments(item.samples, item.sample_rate, max_segment):
            feats = extractor.extract(item.samples[a:b], item.sample_rate)
            if len(feats) == 0:
                continue
            x = torch.from_numpy(normalizer.array(feats))[None].to(device)
            with torch.no_grad():
                log_post = torch.log_softmax(model(x).float(), dim=-1)[0].cpu().numpy()
            ll = scaled_loglikes(log_post, trained.log_prior, 1.0, cfg.prior_scale)
            hyp = decode_batch(graph, [(item.utt, ll)], cfg, device, lattices=rescorer is not None)[0]
            if not hyp.ok:
                log.error("%s", hyp.error)
                continue
            ids = hyp.words
            if rescorer is not None:
                best = rescorer(hyp.lattice).best_path(1.0 / cfg.acwt)
                ids = list(best.words) if best is not None else []
            words += [graph.words[w] for w in ids if graph.words[w] not in ("<SIL>", "<sil>", "!SIL", "<eps>")]
        yield item.utt, " ".join(words)
