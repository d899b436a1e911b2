# The C hot path (cext/) is compiled by cffi at install time; everything else
# about the package lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["xenemu/hw/_build.py:ffibuilder"])
