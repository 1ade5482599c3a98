"""Builds the optional C transforms (archive/_native.c); everything else is in pyproject.toml.

``optional=True``: on a machine without a C compiler the install still
succeeds and the codecs use their numpy implementations (archive/native.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("weightvault.archive._native", ["archive/_native.c"], optional=True,
                             extra_compile_args=["-O3"])])
