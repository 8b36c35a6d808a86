"""The compiled part of asrhybrid (everything else is in pyproject.toml): the pruned lattice determinization's
core, asrhybrid/decode/determinize.cpp, a pybind11 extension built by ``pip install`` (``make setup``)."""

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

setup(
    ext_modules=[
        Pybind11Extension(
            "asrhybrid.decode._determinize",
            ["asrhybrid/decode/determinize.cpp"],
            cxx_std=17,
            extra_compile_args=["-O2"],
        )
    ]
)
