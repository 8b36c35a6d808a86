"""The mini_librispeech recipe on a tiny LibriSpeech-shaped tree (speaker/chapter folders of FLAC, *.trans.txt),
spoken by the synthetic corpus's voices: stages 0-5 with Lhotse's part names (train-clean-5, dev-clean-2)."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf
import yaml
from conftest import REPO
from lhotse import load_manifest

from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus


def librispeech_tree(root: Path, synth_dir: Path) -> Path:
    """LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac and <speaker>-<chapter>.trans.txt."""
    corpus = root / "LibriSpeech"
    entries = [json.loads(line) for line in (synth_dir / "metadata.jsonl").read_text().splitlines()]
    speakers = {e["speaker"]: 100 + k for k, e in enumerate({e["speaker"]: e for e in entries}.values())}
    transcripts: dict[Path, list[str]] = {}
    for k, e in enumerate(entries):
        part = {"train": "train-clean-5", "dev": "dev-clean-2", "test": "dev-clean-2"}[e["part"]]
        spk, chapter = speakers[e["speaker"]], 1000 + speakers[e["speaker"]]
        folder = corpus / part / str(spk) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{spk}-{chapter}-{k:04d}"
        audio, rate = sf.read(synth_dir / e["audio"], dtype="int16")
        sf.write(folder / f"{utt}.flac", audio, rate, format="FLAC")
        transcripts.setdefault(folder / f"{spk}-{chapter}.trans.txt", []).append(f"{utt} {e['text']}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    return corpus


def test_mini_librispeech_recipe_runs_stages_0_to_5_on_lhotses_part_names(tmp_path):
    from asrhybrid.recipe.runner import run_recipe

    synth = generate_corpus(
        tmp_path / "synth",
        SynthConfig(
            seed=11,
            num_speakers=8,
            dev_speakers=1,
            test_speakers=1,
            train_hours=0.06,
            dev_minutes=0.3,
            test_minutes=0.3,
        ),
    )
    corpus = librispeech_tree(tmp_path, synth)
    assert {p.name for p in corpus.iterdir()} == {"train-clean-5", "dev-clean-2"}
    # the shipped recipe, sized down for five minutes of speech (tokens, flat-start iterations, tree)
    config = yaml.safe_load((REPO / "recipes" / "mini_librispeech" / "config.yaml").read_text())
    config.update(
        tokens={"model_type": "bpe", "vocab_size": 60},
        align={"iterations": 3},
        tree={"num_leaves": 60, "min_count": 20},
    )
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    run_recipe(tmp_path / "recipe", work, stage=0, stop_stage=5, corpus_dir=corpus)

    fbank = work / "data" / "fbank"
    train = load_manifest(fbank / "mini_librispeech_cuts_train-clean-5.jsonl.gz")
    assert len(train) > 50 and train[0].load_features().shape[1] == 80
    assert (fbank / "mini_librispeech_cuts_dev-clean-2.jsonl.gz").is_file()
    assert json.loads((work / "data" / "lm" / "small.json").read_text())["dev_perplexity"] > 1
    flat = json.loads((work / "exp" / "mono_flat" / "flat_start.json").read_text())
    assert flat["utterances"] == len(train) and not flat["iterations"][-1]["failed"]
    assert json.loads((work / "exp" / "tree" / "tree.json").read_text())["leaves"] > 1
