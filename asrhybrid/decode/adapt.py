"""adapt-am: a hybrid system's speakers adapted on its own first pass (a decode dir's best paths), into a new model
directory whose final.pt the decoder takes like any other (asrhybrid.nnet.adapt has the transforms and their
training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from asrhybrid.data.manifests import load_cuts
from asrhybrid.decode.corpus import read_best
from asrhybrid.errors import DataError
from asrhybrid.features.cmvn import speaker_of
from asrhybrid.hmm import load_model
from asrhybrid.jobs import InJob, JobsConfig, run_jobs, split_jobs
from asrhybrid.kaldi_tables import AlignmentTable, alignment_table_writer
from asrhybrid.nnet.adapt import AdaptConfig, SpeakerAdaptedAM, adapt_speakers, first_pass_targets
from asrhybrid.nnet.inference import load_am
from asrhybrid.outputs import write_text_atomic


def adapt_am(
    exp_dir: Path | str,
    decode_dir: Path | str,
    cuts_path: Path | str,
    out_dir: Path | str,
    cfg: AdaptConfig | None = None,
    graph_dir: Path | str | None = None,
    device: torch.device | str = "cpu",
    nj: int = 1,
    engine: JobsConfig | None = None,
) -> dict:
    """adapt-am: the speakers of ``cuts_path`` adapted on the best paths of ``decode_dir`` (a decode of those
    cuts by ``exp_dir``'s system) into the model directory ``out_dir`` (final.pt, adapt.json, and the first
    pass's pdf targets first_pass_pdf.ark/.scp). ``exp_dir`` may itself be adapted: its base model is what is
    adapted again (iterations start over from the base, on better targets). The transition model comes from
    ``graph_dir``, by default the graph the decode recorded in its decode.json. The speakers are adapted in
    ``nj`` jobs on ``engine`` (asrhybrid.jobs; a speaker's job: a hash of its name), their transforms joined
    in job order. Returns adapt.json."""
    cfg = cfg or AdaptConfig()
    exp_dir, decode_dir, out_dir = Path(exp_dir), Path(decode_dir), Path(out_dir)
    if not (decode_dir / "decode.json").is_file():
        raise DataError([f"{decode_dir}: no decode.json: not a decode directory (asrhybrid decode makes one)"])
    decoded = json.loads((decode_dir / "decode.json").read_text())
    graph_dir = Path(graph_dir or decoded.get("graph") or "")
    if not (graph_dir / "trans.pkl").is_file():
        raise DataError([f"{decode_dir}: its graph {graph_dir} has no trans.pkl (give the graph or tree dir: --graph)"])
    model, trained = load_am(exp_dir, device)
    base_dir = str(exp_dir)
    if isinstance(model, SpeakerAdaptedAM):
        base_dir = trained.adaptation.get("base", base_dir)
        model, trained = model.base, trained.base()
    _, trans_model = load_model(graph_dir)
    if trans_model.num_pdfs != trained.num_outputs:
        raise DataError(
            [
                f"{exp_dir}: the model has {trained.num_outputs} pdfs, {graph_dir}'s transition model "
                f"{trans_model.num_pdfs}: the decode is not this system's"
            ]
        )
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets_ark = out_dir / "first_pass_pdf.ark"
    with alignment_table_writer(targets_ark) as write:
        for utt, pdfs in first_pass_targets(read_best(decode_dir), tid_to_pdf):
            write(utt, pdfs)
    shared = {"exp_dir": exp_dir, "cuts_path": Path(cuts_path), "targets_ark": targets_ark, "cfg": cfg}
    jobs = split_jobs("adapt", adapt_job, nj, {**shared, "device": str(device)})
    engine = (engine or JobsConfig()).on_device(str(device))
    results = run_jobs(jobs, engine, out_dir / "log", desc=f"adapt {out_dir.name}")
    parts = [results[job.name] for job in jobs if results[job.name] is not None]
    if not parts:
        raise DataError([f"{decode_dir}: no utterance of {cuts_path} has a first-pass best path to adapt on"])
    states = [state for state, _ in parts]
    joined = {
        "speakers": [s for state in states for s in state["speakers"]],
        "transforms": states[0]["transforms"],
        "state": {k: torch.cat([state["state"][k] for state in states]) for k in states[0]["state"]},
    }
    report = {
        "config": parts[0][1]["config"],
        "speakers": {s: r for _, part in parts for s, r in part["speakers"].items()},
        "base": base_dir,
        "first_pass": str(decode_dir),
        "cuts": str(cuts_path),
        "graph": str(graph_dir),
    }
    trained.adapted({**joined, "first_pass": str(decode_dir), "base": base_dir}).save(out_dir)
    write_text_atomic(out_dir / "adapt.json", json.dumps(report, indent=1) + "\n")
    return report


def adapt_job(
    exp_dir: Path, cuts_path: Path, targets_ark: Path, cfg: AdaptConfig, device: str, job: int, nj: int
) -> tuple[dict, dict] | None:
    """Job ``job`` of ``nj`` of :func:`adapt_am`: its speakers' transforms (their state) and report, or None when
    none of its speakers has a first-pass path."""
    model, trained = load_am(exp_dir, device)
    if isinstance(model, SpeakerAdaptedAM):
        model, trained = model.base, trained.base()
    cuts = load_cuts(cuts_path)
    normalizer = trained.normalizer(cuts, cuts_path)  # a speaker's statistics, over every job's cuts
    mine = cuts.filter(InJob(job, nj, key=speaker_of))
    targets = AlignmentTable(targets_ark)
    try:
        if not any(c.id in targets for c in mine):
            return None
        adapted, report = adapt_speakers(model, trained.feat_dim, mine, targets, normalizer, cfg, device)
    finally:
        targets.close()
    return adapted.transforms_state(), report
