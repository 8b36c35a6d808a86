"""Recipe configuration: the one place that reads ``recipes/<corpus>/config.yaml``, and checks each section's
keys against the options of the stage it feeds (their dataclasses live with their stages).

A recipe config names the corpus and gives each stage's options::

    corpus: yesno            # name used in manifest file names
    sample_rate: 8000
    data:
      preparer: yesno        # asrhybrid.data.corpora.PREPARERS
      options: {num_train: 30}
      resample: true         # other rates are resampled on load, else an error
      verify_audio: true     # decode every file once while preparing
    synth: {...}             # only for generated corpora (SynthConfig fields)
    parts: {train: train-clean-5, dev: dev-clean-2}   # the corpus's part names by role (default: the role)
    folds:                   # optional: the recipe run once per value of a data option, each in WORKDIR/fold_<value>
      test_speakers: [jackson, nicolas, theo, yweweler]   # (a list option gets [value]): leave-one-speaker-out
    features:
      fbank: {num_mel_bins: 23}   # KaldiFbankConfig fields
      num_jobs: 2
    lang:
      lexicon: cmudict       # yesno, cmudict, or a Kaldi dict dir
      oov: <UNK>
      position_dependent: true
      stress: true
      sil_prob: 0.5
    lm:
      small: {order: 2}      # first pass (G of HCLG)
      large: {order: 4}      # rescoring (also a KenLM binary)
    tokens: {model_type: bpe, vocab_size: 200}
    align: {iterations: 8}   # FlatStartConfig fields (GMM-free flat start)
    tree: {num_leaves: 500, min_count: 100, questions: auto}   # senone tree (stage 5); questions: auto, arpabet or both
    am:                      # hybrid acoustic models (stage 6), one exp/<system> each
      systems: [dnn, lstmp, fast_slow]
      common: {epochs: 8}    # TrainConfig fields for every system
      lstmp: {chunk_frames: 150, model: {cells: 320, proj: 128}, realign: 0, ali: tree}
                             # per system; realign: rounds of realigning with itself; ali: the alignments
                             # (tree, or an earlier system's realignment, e.g. dnn_ali1)
      nproc: 1               # > 1: data-parallel workers through torchrun (per node)
      nnodes: 1              # > 1: nodes, nproc workers each: one Slurm allocation (jobs: {engine: slurm}), or
      rdzv_endpoint: head:29400   # torchrun's c10d rendezvous, joined by the same command on the other nodes
    decode:                  # stages 7-8: HCLG of the tree with the small LM, lattices, rescoring, scoring
      options: {acwt: 0.1, search_beam: 20, lattice_beam: 6}   # DecodeConfig fields
      nj: 2                  # decoding jobs (processes on CPU)
      lmwt: "7:17"           # Kaldi's scoring grid
      wip: "0,0.5,1.0"
      rescore: [lattice, nbest]   # rescoring methods with the large LM ([] for none)
      kaldi_reference: true  # also decode with Kaldi's decoder and report the agreement
      adapt: {iterations: 2, epochs: 10}   # optional: unsupervised speaker adaptation (LIN + LHUC on the
                             # first pass's best paths; AdaptConfig fields), a second pass as system <system>_sa
    jobs:                    # where every parallel stage's jobs run (asrhybrid.jobs; make ... engine= nj= address=)
      engine: local          # local processes (default), dask (a scheduler at address, or a LocalCluster of
      address: null          # workers), slurm (submitit; options under slurm:)
      nj: 8                  # jobs of each parallel stage (default: the stage's own, decode.nj, features.num_jobs)
      max_retries: 2         # a job that failed or whose worker was lost runs again
      slurm: {partition: cpu, time_min: 60, mem_gb: 8, cpus_per_task: 1}
    e2e:                     # stages 9-10: end-to-end systems on the tokens, one exp/<system> each
      systems: [ctc]
      common: {epochs: 50, max_duration: 7}   # E2EConfig fields for every system
      ctc: {model: {hidden: 256}}   # tokens: {model_type: char, vocab_size: 40}: a system's own token model
      decode:
        hlg: {}              # CTC over HLG (DecodeConfig fields): stage 8's decode, rescore and score
        nj: 1                # jobs of each search (an utterance's job: a hash of its id)
        searches:            # one decode dir each: decode_<part>_<lm or nolm>_<method>
          - {method: greedy}
          - {method: beam, lm: large, alpha: 0.5, beta: 1.0}   # E2EDecodeConfig fields; lm: small or large
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from asrhybrid.align.flat_start import FlatStartConfig
from asrhybrid.data.synth.corpus import SynthConfig
from asrhybrid.decode.decoder import DecodeConfig
from asrhybrid.e2e.decode import E2EDecodeConfig
from asrhybrid.e2e.train import E2EConfig
from asrhybrid.errors import ConfigError
from asrhybrid.features.fbank import KaldiFbankConfig
from asrhybrid.jobs import JobsConfig
from asrhybrid.nnet.adapt import AdaptConfig
from asrhybrid.nnet.train import TrainConfig
from asrhybrid.options import E2E_SYSTEMS, SYSTEMS, e2e_kind, load_yaml


@dataclass
class RecipeConfig:
    path: Path
    corpus: str
    sample_rate: int
    data: dict[str, Any]
    features: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] | None = None
    lang: dict[str, Any] = field(default_factory=dict)
    lm: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)
    align: dict[str, Any] = field(default_factory=dict)
    tree: dict[str, Any] = field(default_factory=dict)
    am: dict[str, Any] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    e2e: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)
    folds: dict[str, list[Any]] = field(default_factory=dict)  # {data option: one value per fold}
    jobs: dict[str, Any] = field(default_factory=dict)  # JobsConfig fields and nj

    @property
    def fold_option(self) -> str | None:
        return next(iter(self.folds), None)

    def fold_names(self) -> list[str]:
        """A fold's name is its value (a list's items joined by '+')."""
        return [_fold_name(v) for v in self.folds.get(self.fold_option, [])]

    def with_fold(self, name: str) -> "RecipeConfig":
        """This recipe as one of its folds: ``data.options.<option>`` set to the fold's value (wrapped in a list
        where the option's value in the recipe is a list, so test_speakers: [jackson] for the fold jackson)."""
        names = self.fold_names()
        if name not in names:
            raise ConfigError(
                f"{self.path}: no fold '{name}'; the folds are {', '.join(names) or 'none (no folds key)'}"
            )
        option = self.fold_option
        value = self.folds[option][names.index(name)]
        options = dict(self.data.get("options") or {})
        if isinstance(options.get(option), list) and not isinstance(value, list):
            value = [value]
        options[option] = value
        return replace(self, data={**self.data, "options": options}, folds={})

    def part(self, role: str) -> str:
        """The corpus's name for a part role (train, dev, test): Lhotse's LibriSpeech says train-clean-5."""
        return str(self.parts.get(role, role))

    @property
    def preparer(self) -> str:
        return self.data.get("preparer", self.corpus)


def load_recipe(recipe_dir: Path | str) -> RecipeConfig:
    recipe_dir = Path(recipe_dir)
    path = recipe_dir / "config.yaml" if recipe_dir.is_dir() else recipe_dir
    if not path.is_file():
        known = sorted(p.parent.name for p in path.parent.parent.glob("*/config.yaml"))
        raise ConfigError(f"no recipe config at {path} (recipes: {', '.join(known) or 'none'})")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    _check_keys(path, "", raw, TOP_KEYS)
    for section, allowed in _section_keys().items():
        value = raw.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: '{section}' must be a mapping, not {value!r}")
        _check_keys(path, section, value, allowed | (_e2e_names(value) if section == "e2e" else set()))
    for name, opts in (raw.get("lm") or {}).items():
        _check_keys(path, f"lm.{name}", opts or {}, {"order", "prune"})
    am = raw.get("am") or {}
    for name in ("common", *SYSTEMS):
        if not isinstance(am.get(name) or {}, dict):
            raise ConfigError(f"{path}: 'am.{name}' must be a mapping, not {am[name]!r}")
        _check_keys(
            path, f"am.{name}", am.get(name) or {}, _field_names("train") - {"system"} | {"realign", "ali", "tree"}
        )
        _check_keys(path, f"am.{name}.tree", (am.get(name) or {}).get("tree") or {}, CHAIN_TREE_KEYS)
    for system in am.get("systems") or []:
        if system not in SYSTEMS:
            _check_keys(path, "am.systems", {system: None}, set(SYSTEMS))
    _check_keys(path, "decode.options", (raw.get("decode") or {}).get("options") or {}, _field_names("decode"))
    adapt = (raw.get("decode") or {}).get("adapt")
    if adapt is not None and not isinstance(adapt, dict):
        raise ConfigError(
            f"{path}: 'decode.adapt' is a mapping (iterations and AdaptConfig fields; {{}} for the "
            f"defaults), not {adapt!r}"
        )
    _check_keys(path, "decode.adapt", adapt or {}, _field_names("adapt") | {"iterations"})
    rounds = (adapt or {}).get("iterations", 1)
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ConfigError(
            f"{path}: 'decode.adapt.iterations' is a count of adaptation rounds (1 or more), not {rounds!r}"
        )
    for method in (raw.get("decode") or {}).get("rescore") or []:
        _check_keys(path, "decode.rescore", {method: None}, {"lattice", "nbest"})
    _check_keys(path, "features.fbank", (raw.get("features") or {}).get("fbank") or {}, _field_names("fbank"))
    e2e = raw.get("e2e") or {}
    for name in ("common", *E2E_SYSTEMS, *_e2e_names(e2e)):
        if not isinstance(e2e.get(name) or {}, dict):
            raise ConfigError(f"{path}: 'e2e.{name}' must be a mapping, not {e2e[name]!r}")
        kinds = ("common", *E2E_SYSTEMS)  # their kind is their name: only a named system says `system:`
        _check_keys(
            path,
            f"e2e.{name}",
            e2e.get(name) or {},
            _field_names("e2e") - ({"system"} if name in kinds else set()) | {"tokens"},
        )
        _check_keys(path, f"e2e.{name}.tokens", (e2e.get(name) or {}).get("tokens") or {}, {"model_type", "vocab_size"})
    for system in e2e.get("systems") or []:
        if not isinstance(system, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", system):
            raise ConfigError(f"{path}: 'e2e.systems': {system!r} is not a system name (letters, digits, _)")
        if system in ("common", "decode", "systems", "nproc", "nnodes", "rdzv_endpoint"):
            raise ConfigError(f"{path}: 'e2e.systems': '{system}' is a key of the e2e section, not a system name")
        if e2e_kind(e2e, system) not in E2E_SYSTEMS:
            raise ConfigError(
                f"{path}: 'e2e.{system}' is not one of {', '.join(E2E_SYSTEMS)}: a named system says "
                f"which with 'system:' (e2e: {{systems: [las_paper], las_paper: {{system: las}}}})"
            )
    systems = list(e2e.get("systems") or [])
    _check_keys(path, "e2e.decode", e2e.get("decode") or {}, {"searches", "hlg", "nj"})
    hlg = (e2e.get("decode") or {}).get("hlg")
    if hlg is not None and not isinstance(hlg, dict):
        raise ConfigError(
            f"{path}: 'e2e.decode.hlg' is a mapping of DecodeConfig fields ({{}} for the defaults), not {hlg!r}"
        )
    _check_keys(path, "e2e.decode.hlg", hlg or {}, _field_names("decode"))
    for search in (e2e.get("decode") or {}).get("searches") or []:
        if not isinstance(search, dict):
            raise ConfigError(f"{path}: each of 'e2e.decode.searches' is a mapping (method, lm, ...), not {search!r}")
        _check_keys(path, "e2e.decode.searches", search, _field_names("e2e_decode") | {"lm", "name", "systems"})
        for system in search.get("systems") or []:
            if system not in systems:
                raise ConfigError(
                    f"{path}: a search of 'e2e.decode.searches' names the system '{system}', which "
                    f"'e2e.systems' does not train ({', '.join(map(str, systems)) or 'none'})"
                )
    jobs = dict(raw.get("jobs") or {})
    nj = jobs.get("nj")
    if nj is not None and not (isinstance(nj, int) and nj >= 1):
        raise ConfigError(f"{path}: 'jobs.nj' is a number of jobs (1 or more), not {nj!r}")
    try:
        JobsConfig(**{k: v for k, v in jobs.items() if k != "nj"})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    folds = raw.get("folds") or {}
    if not (isinstance(folds, dict) and len(folds) <= 1 and all(isinstance(v, list) and v for v in folds.values())):
        raise ConfigError(
            f"{path}: 'folds' is one data option and its values, one fold each (folds: {{test_speakers: "
            f"[jackson, theo]}}), not {folds!r}"
        )
    for option, values in folds.items():
        names = [_fold_name(v) for v in values]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: 'folds.{option}' names a fold twice: {names}")
    for key in ("corpus", "sample_rate", "data"):
        if key not in raw:
            raise ConfigError(f"{path}: missing '{key}'")
    return RecipeConfig(
        path=path,
        corpus=str(raw["corpus"]),
        sample_rate=int(raw["sample_rate"]),
        data=dict(raw["data"]),
        features=dict(raw.get("features") or {}),
        synth=raw.get("synth"),
        lang=dict(raw.get("lang") or {}),
        lm=dict(raw.get("lm") or {}),
        tokens=dict(raw.get("tokens") or {}),
        align=dict(raw.get("align") or {}),
        tree=dict(raw.get("tree") or {}),
        am=dict(raw.get("am") or {}),
        decode=dict(raw.get("decode") or {}),
        e2e=dict(raw.get("e2e") or {}),
        parts={k: str(v) for k, v in (raw.get("parts") or {}).items()},
        folds=dict(folds),
        jobs=jobs,
    )


def _e2e_names(e2e: dict) -> set[str]:
    """The e2e section's named systems: those of ``e2e.systems`` beside the kinds (ctc, rnnt, las)."""
    return {s for s in e2e.get("systems") or [] if isinstance(s, str)} - set(E2E_SYSTEMS)


def _fold_name(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


TOP_KEYS = {
    "corpus",
    "sample_rate",
    "data",
    "features",
    "synth",
    "lang",
    "lm",
    "tokens",
    "align",
    "tree",
    "am",
    "decode",
    "e2e",
    "parts",
    "folds",
    "jobs",
    "description",
}


_OPTION_CLASSES = {
    "fbank": KaldiFbankConfig,
    "synth": SynthConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
    "e2e": E2EConfig,
    "adapt": AdaptConfig,
    "e2e_decode": E2EDecodeConfig,
    "align": FlatStartConfig,
}


def _field_names(kind: str) -> set[str]:
    """Fields of the option dataclass a section feeds."""
    return {f.name for f in fields(_OPTION_CLASSES[kind])}


def _section_keys() -> dict[str, set[str]]:
    return {
        "data": {"preparer", "download", "options", "resample", "verify_audio"},
        "features": {"fbank", "num_jobs"},
        "synth": _field_names("synth"),
        "lang": {"lexicon", "oov", "position_dependent", "sil_prob", "stress"},
        "lm": {"small", "large"},
        "tokens": {"model_type", "vocab_size"},
        "align": _field_names("align"),
        "tree": {"num_leaves", "min_count", "questions"},
        "am": {"systems", "common", "nproc", "nnodes", "rdzv_endpoint", *SYSTEMS},
        "decode": {"options", "nj", "lmwt", "wip", "rescore", "kaldi_reference", "nbest", "adapt"},
        "e2e": {"systems", "common", "nproc", "nnodes", "rdzv_endpoint", "decode", *E2E_SYSTEMS},
        "parts": {"train", "dev", "test"},
        "jobs": {f.name for f in fields(JobsConfig)} | {"nj"},
    }


CHAIN_TREE_KEYS = {"num_leaves", "min_count", "questions", "frame_subsampling_factor"}  # a chain system's own tree


def _check_keys(path: Path, section: str, values: dict, allowed: set[str]) -> None:
    """Unknown keys are errors naming the nearest valid one (a typo must not be silently ignored)."""
    for key in values:
        if key not in allowed:
            where = f"{section}.{key}" if section else key
            near = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid: {', '.join(sorted(allowed))}"
            raise ConfigError(f"{path}: unknown key '{where}'{hint}")
