"""Reading a Kaldi lang dir's tables: words.txt / phones.txt symbol tables and the integer lists of phones/."""

from __future__ import annotations

from pathlib import Path

from asrhybrid.errors import DataError


def _require(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path} not found: is {path.parent} a Kaldi lang dir (asrhybrid prepare-lang makes one)?"])
    return path


def read_symbol_table(path: Path) -> dict[str, int]:
    """``SYMBOL ID`` per line (words.txt, phones.txt) as a dict."""
    table = {}
    _require(path)
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if len(fields) != 2:
            raise DataError([f"{path}:{lineno}: a symbol table line is 'SYMBOL ID', got '{line}'"])
        table[fields[0]] = int(fields[1])
    return table


def read_int_list(path: Path) -> list[int]:
    """A lang dir's integer list file (phones/silence.int, disambig.int, ...)."""
    try:
        return [int(x) for x in _require(path).read_text().split()]
    except ValueError as e:
        raise DataError([f"{path}: expected whitespace-separated integers ({e})"]) from None


def read_topo(lang_dir: Path) -> str:
    """The HMM topology text of a lang dir (``topo``, Kaldi's text format)."""
    return _require(Path(lang_dir) / "topo").read_text(encoding="utf-8")
