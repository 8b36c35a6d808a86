"""The stage runner behind ``make stage=N stop_stage=M corpus=NAME``.

Stages are numbered the same in every recipe (Kaldi's run.sh, icefall's
prepare.sh); each one is a chain of ``asrhybrid`` verbs whose command lines are
logged, so a user can re-run any step by hand. Stages skip finished work
through the verbs' completion markers; ``force`` redoes it.

    0  data      Lhotse manifests (generating the corpus first for synth)
    1  fbank     Kaldi fbank features, CMVN statistics
    2  lang      dict dir (lexicon) and Kaldi lang dir (phones, words, topo, L.fst)
    3  lm        small and large n-gram LMs (KenLM), G.fst (lang_test), BPE tokens
    4  align     GMM-free flat start: equal alignment, CI network, realignment (exp/mono_flat)
    5  tree      senone decision tree from the CI alignments, pdf alignments (exp/tree)
    6  am        hybrid acoustic models on the senone alignments (exp/dnn, exp/lstmp, exp/fast_slow),
                 optionally realigned with their own first pass and trained again (Kaldi's practice)
    7  graph     HCLG of the tree with the small LM, and its k2 form (exp/tree/graph_small)
    8  decode    per system and eval part: lattices (exp/<system>/decode_<part>_small), rescoring with the
                 large LM (decode_<part>_large_lattice, _nbest), Kaldi's scoring grid, RESULTS.md
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from asrhybrid.data.download import downloaded_corpus_dir
from asrhybrid.data.manifests import manifest_paths
from asrhybrid.errors import AsrHybridError, ConfigError
from asrhybrid.features.layout import FeatureSet
from asrhybrid.jobs import JobsConfig, run_distributed
from asrhybrid.logs import setup_logging
from asrhybrid.options import e2e_kind, format_options, is_chain
from asrhybrid.recipe.config import CHAIN_TREE_KEYS, RecipeConfig, load_recipe
from asrhybrid.score.results import fold_workdir
from asrhybrid.verbs import run_verb

log = logging.getLogger(__name__)


@dataclass
class RecipeRun:
    config: RecipeConfig
    workdir: Path
    corpus_dir: Path | None
    force: bool
    jobs: dict | None = None  # the command line's engine options over the recipe's ``jobs:``

    def _job_options(self) -> dict:
        """The recipe's ``jobs:`` under the command line's options."""
        return {**self.config.jobs, **{k: v for k, v in (self.jobs or {}).items() if v is not None}}

    def job_args(self, nj: int | None) -> list[str]:
        """A parallel verb's job options: ``--nj`` (the command line's, the recipe's ``jobs.nj``, or ``nj``, the
        stage's own; None: the verb has no --nj, its input decides) and the engine's (asrhybrid.jobs)."""
        jobs = self._job_options()
        given = jobs.pop("nj", None)
        args = [] if nj is None else ["--nj", str(given or nj)]
        for key, value in jobs.items():
            if key == "slurm":
                args += [arg for k, v in value.items() for arg in ("--slurm", f"{k}={v}")]
            elif value is not None:
                args += [f"--{key.replace('_', '-')}", str(value)]
        return args

    @property
    def manifest_dir(self) -> Path:
        return self.workdir / "data" / "manifests"

    @property
    def fbank_dir(self) -> Path:
        return self.workdir / "data" / "fbank"

    @property
    def lang_dir(self) -> Path:
        return self.workdir / "data" / "lang"

    def supervisions(self, role: str, must_exist: bool = True) -> Path:
        """The supervisions manifest of a part role (train, dev, test), under the corpus's name for it."""
        path = manifest_paths(self.manifest_dir, self.config.corpus, self.config.part(role))[1]
        return self._part_file(path, "supervisions", role) if must_exist else path

    def features(self, role: str) -> FeatureSet:
        """Stage 1's features of a part role."""
        return FeatureSet(self.fbank_dir, self.config.corpus, self.config.part(role))

    def cuts(self, role: str) -> Path:
        """The cuts (with features) of a part role."""
        return self._part_file(self.features(role).cuts, "cuts", role)

    def _part_file(self, path: Path, kind: str, role: str) -> Path:
        """``path`` (``<corpus>_<kind>_<part>.jsonl.gz``) when it exists, else an error naming the parts there are."""
        if not path.is_file():
            prefix = f"{self.config.corpus}_{kind}_"
            found = sorted(p.name[len(prefix) : -len(".jsonl.gz")] for p in path.parent.glob(f"{prefix}*.jsonl.gz"))
            raise ConfigError(
                f"{path} not found: the recipe's {role} part is '{self.config.part(role)}'; the parts in "
                f"{path.parent} are {', '.join(found) or 'none (run the earlier stages)'}. Name it in the recipe: "
                f"parts: {{{role}: NAME}}"
            )
        return path

    def cmvn(self, role: str) -> Path:
        return self.features(role).global_cmvn

    def log_file(self, stage: str, verb: str) -> Path:
        return self.workdir / "exp" / stage / "log" / f"{verb}.log"

    def _verb_argv(self, stage: str, verb: str, args: list[str]) -> list[str]:
        """``VERB ARGS --log-file exp/<stage>/log/<verb>.log [--force]``."""
        return [verb, *args, "--log-file", str(self.log_file(stage, verb)), *(["--force"] if self.force else [])]

    def run_verb(self, stage: str, verb: str, args: list[str]) -> None:
        """Run ``asrhybrid VERB ARGS`` in this process (asrhybrid.verbs), logging to exp/<stage>/log/<verb>.log."""
        argv = self._verb_argv(stage, verb, args)
        try:
            run_verb(argv)
        except AsrHybridError:
            log.error("'asrhybrid %s' failed; its log: %s", verb, self.log_file(stage, verb))
            raise

    def engine(self) -> JobsConfig:
        """The run's engine (asrhybrid.jobs)."""
        return JobsConfig(**{k: v for k, v in self._job_options().items() if k != "nj"})

    def run_verb_workers(
        self, stage: str, verb: str, args: list[str], nproc: int, nnodes: int = 1, rdzv_endpoint: str | None = None
    ) -> None:
        """``run_verb`` over ``nnodes`` x ``nproc`` data-parallel workers: with ``engine: slurm`` one allocation
        through submitit (asrhybrid.jobs.run_distributed); else torchrun on this machine, with ``--standalone``
        on one node or, over several, a c10d rendezvous at ``rdzv_endpoint`` that the other nodes join with the
        command the log gives."""
        engine = self.engine()
        if engine.engine == "slurm":
            run_distributed(
                run_verb_task,
                [self._verb_argv(stage, verb, args)],
                nnodes,
                nproc,
                engine,
                self.log_file(stage, verb).parent,
                f"{verb}-{stage}",
            )
            return
        if nproc <= 1 and nnodes <= 1:
            return self.run_verb(stage, verb, args)
        argv = torchrun_argv(self._verb_argv(stage, verb, args), nproc, nnodes, rdzv_endpoint, f"{verb}-{stage}")
        log.info("%s", shlex.join(argv))
        if nnodes > 1:
            log.info("start the same on each of the other %d nodes (the workdir on a shared filesystem)", nnodes - 1)
        if subprocess.run(argv).returncode != 0:
            log.error("'asrhybrid %s' failed; its log: %s", verb, self.log_file(stage, verb))
            raise AsrHybridError(
                f"'asrhybrid {verb}' over {nnodes} x {nproc} workers failed (see {self.log_file(stage, verb)})"
            )


def torchrun_argv(verb_argv: list[str], nproc: int, nnodes: int, rdzv_endpoint: str | None, rdzv_id: str) -> list[str]:
    """torchrun's command line for ``asrhybrid VERB_ARGV``: ``--standalone`` on one node, a c10d rendezvous at
    ``rdzv_endpoint`` (HOST:PORT, reachable from every node) over several."""
    if nnodes <= 1:
        rendezvous = ["--standalone"]
    elif not rdzv_endpoint:
        raise ConfigError(
            f"training over {nnodes} nodes with torchrun needs the rendezvous: rdzv_endpoint: HOST:PORT (a host "
            "every node reaches) beside nnodes, or jobs: {engine: slurm} for one Slurm allocation"
        )
    else:
        rendezvous = [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={nproc}",
        "-m",
        "asrhybrid",
        *verb_argv,
    ]


def run_verb_task(argv: list[str]) -> None:
    """One worker of a distributed training submitted through submitit: the verb, logging as the command line's."""
    setup_logging()
    run_verb(argv)


def stage_data(run: RecipeRun) -> None:
    cfg = run.config
    corpus_dir = run.corpus_dir
    if cfg.synth is not None:
        corpus_dir = corpus_dir or run.workdir / "download" / cfg.corpus
        synth_opts = {"sampling_rate": cfg.sample_rate, **cfg.synth}
        run.run_verb("data", "synth-corpus", [str(corpus_dir), *format_options(synth_opts), *run.job_args(None)])
    if corpus_dir is None and cfg.data.get("download"):
        target = run.workdir / "download"
        run.run_verb("data", "download", [cfg.data["download"], str(target)])
        corpus_dir = downloaded_corpus_dir(cfg.data["download"], target)
    if corpus_dir is None:
        raise ConfigError(f"recipe '{cfg.corpus}' needs the corpus location: make ... corpus_dir=PATH")
    args = [
        str(corpus_dir),
        str(run.manifest_dir),
        "--corpus",
        cfg.corpus,
        "--preparer",
        cfg.preparer,
        "--sample-rate",
        str(cfg.sample_rate),
        *format_options(cfg.data.get("options") or {}),
    ]
    if not cfg.data.get("resample", True):
        args.append("--no-resample")
    if not cfg.data.get("verify_audio", True):
        args.append("--no-verify-audio")
    run.run_verb("data", "prepare-data", args)


def stage_fbank(run: RecipeRun) -> None:
    feats = run.config.features
    fbank_opts = {"sampling_rate": run.config.sample_rate, **(feats.get("fbank") or {})}
    args = [
        str(run.manifest_dir),
        str(run.fbank_dir),
        "--corpus",
        run.config.corpus,
        *run.job_args(feats.get("num_jobs", 2)),
        *format_options(fbank_opts),
    ]
    run.run_verb("make_fbank", "compute-fbank", args)


def stage_lang(run: RecipeRun) -> None:
    lang = run.config.lang
    dict_dir, train = run.workdir / "data" / "local" / "dict", run.supervisions("train")
    args = [str(dict_dir), "--lexicon", str(lang.get("lexicon", "cmudict")), "--text", str(train)]
    run.run_verb("lang", "prepare-dict", args + ([] if lang.get("stress", True) else ["--no-stress"]))
    args = [
        str(dict_dir),
        str(run.lang_dir),
        "--oov",
        str(lang.get("oov", "<UNK>")),
        "--sil-prob",
        str(lang.get("sil_prob", 0.5)),
    ]
    run.run_verb(
        "lang", "prepare-lang", args + ([] if lang.get("position_dependent", True) else ["--no-position-dependent"])
    )


def stage_lm(run: RecipeRun) -> None:
    lm, lm_dir = run.config.lm, run.workdir / "data" / "lm"
    train = str(run.supervisions("train"))
    dev = [str(p) for p in (run.supervisions("dev", False), run.supervisions("test", False)) if p.is_file()][:1]
    common = ["--words", str(run.lang_dir / "words.txt"), "--oov", str(run.config.lang.get("oov", "<UNK>"))]
    for name, defaults in (("small", {"order": 2}), ("large", {"order": 4})):
        opts = {**defaults, **(lm.get(name) or {})}
        args = [train, "--out-dir", str(lm_dir), "--name", name, "--order", str(opts["order"]), *common]
        if opts.get("prune"):
            args += ["--prune", *map(str, opts["prune"])]
        if name == "large":
            args.append("--binary")
        run.run_verb("lm", "train-lm", args + (["--dev", *dev] if dev else []))
    run.run_verb(
        "lm",
        "format-lm",
        [str(run.lang_dir), str(lm_dir / "small.arpa"), str(run.workdir / "data" / "lang_test_small")],
    )
    for tokens in token_specs(run):
        run.run_verb(
            "lm",
            "train-bpe",
            [
                train,
                "--out-dir",
                str(token_dir(run, tokens)),
                "--vocab-size",
                str(tokens["vocab_size"]),
                "--model-type",
                tokens["model_type"],
            ],
        )


def stage_align(run: RecipeRun) -> None:
    args = [
        str(run.cuts("train")),
        str(run.lang_dir),
        str(run.workdir / "exp" / "mono_flat"),
        "--cmvn",
        str(run.cmvn("train")),
        *format_options(run.config.align),
    ]
    run.run_verb("mono_flat", "align-flat-start", [*args, *run.job_args(1)])


def stage_tree(run: RecipeRun) -> None:
    tree = {"num_leaves": 500, "min_count": 100, "questions": "auto", **run.config.tree}
    args = [
        str(run.cuts("train")),
        str(run.lang_dir),
        str(run.workdir / "exp" / "mono_flat"),
        str(run.workdir / "exp" / "tree"),
        "--cmvn",
        str(run.cmvn("train")),
        "--num-leaves",
        str(tree["num_leaves"]),
        "--min-count",
        str(tree["min_count"]),
        "--questions",
        str(tree["questions"]),
    ]
    run.run_verb("tree", "build-tree", args)


def system_options(run: RecipeRun, system: str) -> dict:
    am = run.config.am
    return {**(am.get("common") or {}), **(am.get(system) or {})}


def system_tree(run: RecipeRun, system: str) -> Path:
    """The tree a stage-6 system's outputs are over: the tree stage's, or a chain system's own (Kaldi chain's
    topology and frame rate, from the alignments it names with ``ali``): exp/chain_tree, or
    exp/chain_tree_<ali> from another system's realignment."""
    exp = run.workdir / "exp"
    if not is_chain(system):
        return exp / "tree"
    ali = str(system_options(run, system).get("ali", "tree"))
    return exp / ("chain_tree" if ali == "tree" else f"chain_tree_{ali}")


def build_chain_tree(run: RecipeRun, system: str, ali_dir: Path, options: dict) -> Path:
    """A chain system's tree from ``ali_dir``'s alignments (Kaldi's steps/nnet3/chain/build_tree.sh): the tree
    stage's leaves and questions unless ``options`` (am.<system>.tree) say otherwise, frame subsampling 3."""
    tree = {
        "num_leaves": 500,
        "min_count": 100,
        "questions": "auto",
        **run.config.tree,
        "frame_subsampling_factor": 3,
        **options,
    }
    out = system_tree(run, system)
    args = [
        str(run.cuts("train")),
        str(run.lang_dir),
        str(ali_dir),
        str(out),
        "--cmvn",
        str(run.cmvn("train")),
        "--topology",
        "chain",
        *[f"--{k.replace('_', '-')}={tree[k]}" for k in sorted(CHAIN_TREE_KEYS)],
    ]
    run.run_verb(system, "build-tree", args)
    return out


def stage_am(run: RecipeRun) -> None:
    am = run.config.am
    exp, cuts, cmvn = run.workdir / "exp", str(run.cuts("train")), str(run.cmvn("train"))
    for system in am.get("systems") or ["dnn"]:
        opts = system_options(run, system)
        rounds = int(opts.pop("realign", 0))
        model_opts = opts.pop("model", None) or {}
        tree_opts = opts.pop("tree", None) or {}
        ali_dir = exp / str(opts.pop("ali", "tree"))  # another system's realignment (e.g. dnn_ali1), or the tree's
        common = [
            "--cmvn",
            cmvn,
            "--system",
            system,
            *format_options(opts),
            *["--model-opt" if a == "--opt" else a for a in format_options(model_opts)],
        ]
        if not (ali_dir / "ali_pdf.scp").is_file():
            raise ConfigError(
                f"am.{system}: no alignments in {ali_dir} (ali_pdf.scp): the tree stage writes exp/tree, a "
                "system with realign: N writes exp/<system>_ali1..N; list that system first"
            )
        if is_chain(system):
            if rounds:
                raise ConfigError(f"am.{system}: a chain system is not realigned (realign: {rounds})")
            ali_dir = build_chain_tree(run, system, ali_dir, tree_opts)
        elif tree_opts:
            raise ConfigError(f"am.{system}: 'tree' options are for chain systems (their own tree)")
        for r in range(rounds + 1):  # round r < rounds: a first pass whose alignments the next one trains on
            out = exp / system if r == rounds else exp / f"{system}_pass{r + 1}"
            run.run_verb_workers(
                system,
                "train-am",
                [cuts, str(ali_dir), str(run.lang_dir), str(out), *common],
                int(am.get("nproc", 1)),
                int(am.get("nnodes", 1)),
                am.get("rdzv_endpoint"),
            )
            if r < rounds:
                realigned = exp / f"{system}_ali{r + 1}"
                run.run_verb(
                    system,
                    "align-am",
                    [cuts, str(run.lang_dir), str(ali_dir), str(out), str(realigned), *run.job_args(1)],
                )
                ali_dir = realigned


def graph_dir(run: RecipeRun, system: str) -> Path:
    """A system's decoding graph: its tree's, as Kaldi's nnet recipes decode with the tree's graph (the
    cross-entropy systems of stage 6 share the tree, so one HCLG serves them all; a chain system's tree has
    its own)."""
    return system_tree(run, system) / "graph_small"


def stage_graph(run: RecipeRun) -> None:
    lang = str(run.workdir / "data" / "lang_test_small")
    chain_trees = {run.workdir / "exp" / "tree": False}  # tree dir -> whether a chain system's
    chain_trees.update((system_tree(run, s), is_chain(s)) for s in run.config.am.get("systems") or ["dnn"])
    for tree, chain in sorted(chain_trees.items()):
        # a chain model's graph has self-loop scale 1.0 (Kaldi: utils/mkgraph.sh --self-loop-scale 1.0)
        args = [lang, str(tree), str(tree / "graph_small"), *(["--self-loop-scale", "1.0"] if chain else [])]
        run.run_verb("graph", "mkgraph", args)


def eval_parts(run: RecipeRun) -> list[str]:
    """The roles decoded: dev (where the scoring grid's setting is picked) and test, those the corpus has."""
    return [role for role in ("dev", "test") if run.supervisions(role, must_exist=False).is_file()]


def stage_decode(run: RecipeRun) -> None:
    dec = run.config.decode
    for system in run.config.am.get("systems") or ["dnn"]:
        for role in eval_parts(run):
            lattice_decode(
                run,
                system,
                graph_dir(run, system),
                role,
                dec.get("options") or {},
                kaldi_reference=dec.get("kaldi_reference", True),
            )
        if dec.get("adapt") is not None:
            for role in eval_parts(run):
                adapted_decode(run, system, role, dict(dec["adapt"]))
    run.run_verb("decode", "results", [str(run.workdir), "--corpus", run.config.corpus])


def adapted_decode(run: RecipeRun, system: str, role: str, adapt: dict) -> None:
    """The second pass of unsupervised speaker adaptation, as system ``<system>_sa``: ``iterations`` rounds of
    adapt-am (each from the base model, on the previous pass's best paths: exp/<system>_sa/adapt_<part>_<i>),
    the rounds before the last decoded into their own dir; the last round goes through lattice_decode."""
    dec, exp, part = run.config.decode, run.workdir / "exp", run.config.part(role)
    iterations = int(adapt.pop("iterations", 1))
    adapted, previous = f"{system}_sa", exp / system / f"decode_{part}_small"
    for i in range(1, iterations + 1):
        model = exp / adapted / f"adapt_{part}_{i}"
        run.run_verb(
            adapted,
            "adapt-am",
            [
                str(exp / system),
                str(previous),
                str(model),
                "--cuts",
                str(run.cuts(role)),
                *format_options(adapt),
                *run.job_args(1),
            ],
        )
        if i < iterations:
            previous = model / "decode_small"
            run.run_verb(
                adapted,
                "decode",
                [
                    str(graph_dir(run, system)),
                    str(model),
                    str(previous),
                    "--cuts",
                    str(run.cuts(role)),
                    *run.job_args(dec.get("nj", 1)),
                    *format_options(dec.get("options") or {}),
                ],
            )
    lattice_decode(run, adapted, graph_dir(run, system), role, dec.get("options") or {}, model_dir=model)


def lattice_decode(
    run: RecipeRun,
    system: str,
    graph: Path,
    role: str,
    options: dict,
    kaldi_reference: bool = False,
    model_dir: Path | None = None,
) -> None:
    """Stage 8's chain for one system and part: lattices over ``graph`` (HCLG, or a CTC system's HLG) with the
    small LM, each ``decode.rescore`` method with the large LM, and Kaldi's scoring grid of each (test: with
    the setting picked on dev, where there is a dev part). The model is exp/<system> unless ``model_dir``."""
    dec = run.config.decode
    exp, lm_dir, part = run.workdir / "exp", run.workdir / "data" / "lm", run.config.part(role)
    grid = ["--lmwt", str(dec.get("lmwt", "7:17")), "--wip", str(dec.get("wip", "0,0.5,1.0"))]
    decode_dir = exp / system / f"decode_{part}_small"
    args = [
        str(graph),
        str(model_dir or exp / system),
        str(decode_dir),
        "--cuts",
        str(run.cuts(role)),
        *run.job_args(dec.get("nj", 1)),
        *format_options(options),
    ]
    run.run_verb(system, "decode", args + (["--kaldi-reference"] if kaldi_reference else []))
    dirs = [decode_dir]
    for method in dec.get("rescore", ["lattice", "nbest"]) or []:
        rescored = exp / system / f"decode_{part}_large_{method}"
        run.run_verb(
            system,
            "rescore",
            [
                str(decode_dir),
                str(lm_dir / "small.arpa"),
                str(lm_dir / "large.arpa"),
                str(rescored),
                "--method",
                method,
                *run.job_args(None),
            ],
        )
        dirs.append(rescored)
    has_dev = "dev" in eval_parts(run)
    for d in dirs:
        run.run_verb(system, "score", [str(d), str(run.cuts(role)), *grid])
        if role == "test" and has_dev:
            dev_dir = exp / system / d.name.replace(f"_{part}_", f"_{run.config.part('dev')}_", 1)
            run.run_verb(system, "score", [str(d), str(run.cuts(role)), *grid, "--params-from", str(dev_dir)])


def stage_e2e(run: RecipeRun) -> None:
    e2e = run.config.e2e
    for system in e2e.get("systems") or []:
        opts = {**(e2e.get("common") or {}), **(e2e.get(system) or {})}
        opts.pop("system", None)
        model_opts = opts.pop("model", None) or {}
        lang_dir = token_dir(run, opts.pop("tokens", None))
        args = [
            str(run.cuts("train")),
            str(lang_dir),
            str(run.workdir / "exp" / system),
            "--cmvn",
            str(run.cmvn("train")),
            "--system",
            e2e_kind(e2e, system),
            *format_options(opts),
            *["--model-opt" if a == "--opt" else a for a in format_options(model_opts)],
        ]
        run.run_verb_workers(
            system, "train-e2e", args, int(e2e.get("nproc", 1)), int(e2e.get("nnodes", 1)), e2e.get("rdzv_endpoint")
        )


def token_specs(run: RecipeRun) -> list[dict]:
    """The token models stage 3 trains: the recipe's ``tokens``, and any other that an end-to-end system's
    options ask for (``e2e.<system>.tokens``: e.g. characters for CTC beside BPE pieces for RNN-T)."""
    specs = [_token_spec(run.config.tokens)]
    e2e = run.config.e2e
    for system in e2e.get("systems") or []:
        asked = {**(e2e.get("common") or {}), **(e2e.get(system) or {})}.get("tokens")
        if asked and _token_spec(asked) not in specs:
            specs.append(_token_spec(asked))
    return specs


def _token_spec(tokens: dict | None) -> dict:
    return {"model_type": "bpe", "vocab_size": 200, **(tokens or {})}


def token_dir(run: RecipeRun, tokens: dict | None = None) -> Path:
    """A token model's dir (data/lang_<type>_<N>): ``tokens``'s, or by default the recipe's."""
    spec = _token_spec(tokens if tokens is not None else run.config.tokens)
    return run.workdir / "data" / f"lang_{spec['model_type']}_{spec['vocab_size']}"


def stage_e2e_decode(run: RecipeRun) -> None:
    """Every search of ``e2e.decode.searches`` on dev and test, scored; then RESULTS.md. A search runs for every
    system whose kind can do it (flashlight: CTC only) or for its ``systems``; its decode dir is
    ``decode_<part>_<lm>_<name>``, the name being the search's ``name`` or its method."""
    e2e = run.config.e2e
    exp, lm_dir = run.workdir / "exp", run.workdir / "data" / "lm"
    searches = (e2e.get("decode") or {}).get("searches") or [{"method": "greedy"}]
    hlg = (e2e.get("decode") or {}).get("hlg")  # DecodeConfig options of WFST decoding over HLG (CTC systems)
    for system in e2e.get("systems") or []:
        kind = e2e_kind(e2e, system)
        if kind == "ctc" and hlg is not None:
            graph = exp / system / "graph_small"
            run.run_verb(
                system,
                "mkgraph-ctc",
                [str(exp / system / "tokens"), str(run.workdir / "data" / "lang_test_small"), str(graph)],
            )
            for role in eval_parts(run):
                lattice_decode(run, system, graph, role, hlg)
        for role in eval_parts(run):
            for search in searches:
                search = dict(search)
                lm, only = search.pop("lm", None), search.pop("systems", None)
                method = search.get("method", "beam")  # E2EDecodeConfig's default
                name = search.pop("name", None) or method
                if only is not None and system not in only:
                    continue
                if method == "flashlight" and kind != "ctc":
                    continue  # flashlight's decoder is a CTC search
                out = exp / system / f"decode_{run.config.part(role)}_{lm or 'nolm'}_{name}"
                args = [str(exp / system), str(run.cuts(role)), str(out), *format_options(search)]
                if lm:
                    args += ["--lm", str(lm_dir / f"{lm}.arpa")]
                run.run_verb(system, "decode-e2e", [*args, *run.job_args((e2e.get("decode") or {}).get("nj", 1))])
                run.run_verb(system, "score", [str(out), str(run.cuts(role))])
    run.run_verb("decode", "results", [str(run.workdir), "--corpus", run.config.corpus])


STAGES: list[tuple[int, str, Callable[[RecipeRun], None]]] = [
    (0, "data", stage_data),
    (1, "fbank", stage_fbank),
    (2, "lang", stage_lang),
    (3, "lm", stage_lm),
    (4, "align", stage_align),
    (5, "tree", stage_tree),
    (6, "am", stage_am),
    (7, "graph", stage_graph),
    (8, "decode", stage_decode),
    (9, "e2e", stage_e2e),
    (10, "e2e_decode", stage_e2e_decode),
]


def run_recipe(
    recipe: Path | str,
    workdir: Path | str,
    stage: int = 0,
    stop_stage: int = 100,
    corpus_dir: Path | str | None = None,
    force: bool = False,
    folds: list[str] | None = None,
    jobs: dict | None = None,
) -> None:
    """Stages ``stage..stop_stage`` of a recipe in ``workdir``. A recipe with ``folds`` runs them once per fold
    (``folds``: only those), each in WORKDIR/fold_<name>, and a run that scores (stage 8 or 10) writes
    WORKDIR/RESULTS.md over the folds. ``jobs`` (engine, address, workers, nj) overrides the recipe's
    ``jobs:`` for every parallel stage."""
    config = load_recipe(recipe)
    corpus = Path(corpus_dir) if corpus_dir else None
    selected = [s for s in STAGES if stage <= s[0] <= stop_stage]
    if not selected:
        raise ConfigError(
            f"no stage in {stage}..{stop_stage}; stages: " + ", ".join(f"{n} {name}" for n, name, _ in STAGES)
        )
    if not config.folds:
        if folds:
            raise ConfigError(f"{config.path} has no folds (a 'folds' key), so no fold {', '.join(folds)}")
        with workdir_lock(Path(workdir)):
            _run_stages(RecipeRun(config, Path(workdir), corpus, force, jobs), selected)
        return
    runs = {
        fold: RecipeRun(config.with_fold(fold), fold_workdir(workdir, fold), corpus, force, jobs)
        for fold in folds or config.fold_names()
    }  # an unknown fold stops the run before any stage
    for fold, run in runs.items():
        log.info(
            "Fold %s (data.options.%s: %s), workdir %s",
            fold,
            config.fold_option,
            run.config.data["options"][config.fold_option],
            run.workdir,
        )
        with workdir_lock(run.workdir):
            _run_stages(run, selected)
    if any(name in ("decode", "e2e_decode") for _, name, _ in selected):
        summary = RecipeRun(config, Path(workdir), corpus, force)
        summary.run_verb(
            "decode",
            "results",
            [
                str(workdir),
                "--corpus",
                config.corpus,
                "--folds",
                ",".join(config.fold_names()),
                "--fold-option",
                str(config.fold_option),
            ],
        )


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """One run per workdir: a second one stops at once, naming the first one's pid (the lock goes with the process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise AsrHybridError(
                f"{workdir} is in use by another run (pid {holder}); wait for it to end or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _run_stages(run: RecipeRun, selected) -> None:
    config = run.config
    for number, name, fn in selected:
        start = time.time()
        log.info("Stage %d: %s (%s, workdir %s)", number, name, config.corpus, run.workdir)
        fn(run)
        log.info("Stage %d: %s done in %.1f s", number, name, time.time() - start)
