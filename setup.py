"""Build the optional C accelerator; the metadata is in pyproject.toml.

`optional=True`: where it cannot be compiled (no C compiler), the install goes on without it
and the SDK runs its pure-Python path, which gives the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("inferencesh._speedups", ["inferencesh/_speedups.c"], optional=True),
    ],
)
