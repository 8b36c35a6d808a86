"""Option values and system names that every layer shares: YAML scalars as configs mean them, ``KEY=VALUE``
command-line options (``--opt``) and back, the stage-6 and stage-9 system kinds. Recipes themselves are read by
asrhybrid.recipe.config."""

from __future__ import annotations

import re
from typing import Any

import yaml

from asrhybrid.errors import ConfigError

# stage 6's acoustic models (slow: Fast/Slow's slow encoder alone); X_chain: network X trained with LF-MMI
CE_SYSTEMS = ("dnn", "lstmp", "fast_slow", "slow")
CHAIN_SUFFIX = "_chain"
SYSTEMS = (*CE_SYSTEMS, *(s + CHAIN_SUFFIX for s in ("dnn", "lstmp", "fast_slow")))
E2E_SYSTEMS = ("ctc", "rnnt", "las")  # stage 9's end-to-end systems


def is_chain(system: str) -> bool:
    """Whether a stage-6 system is a chain model (LF-MMI; its outputs are log-likelihoods, no priors)."""
    return system.endswith(CHAIN_SUFFIX)


def network_of(system: str) -> str:
    """The network a stage-6 system trains: ``lstmp`` for ``lstmp`` and ``lstmp_chain``."""
    return system.removesuffix(CHAIN_SUFFIX)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 as a string (its floats need a dot); configs mean a number (as YAML 1.2 does)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def e2e_kind(e2e: dict, system: str) -> str:
    """A stage-9 system's kind (ctc, rnnt or las): its name, or its section's ``system`` for a named one."""
    return str((e2e.get(system) or {}).get("system", system))


# YAML 1.1 reads yes/no/on/off as booleans; on a command line they are words (split=no is a split's name)
_WORDS = {"yes", "no", "on", "off", "y", "n"}


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["num_mel_bins=40", "dev_speakers=[theo]"]`` -> dict; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"option '{pair}' is not KEY=VALUE")
        out[key.strip()] = value.strip() if value.strip().lower() in _WORDS else load_yaml(value)
    return out


def format_options(options: dict[str, Any]) -> list[str]:
    """The inverse of parse_options, for command lines that can be re-run by hand."""
    args = []
    for key, value in options.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        args += ["--opt", f"{key}={text}"]
    return args
