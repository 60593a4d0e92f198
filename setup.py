"""Build of the optional C extension ``pipelines._bpe`` (fast byte-level BPE); the metadata is in pyproject.toml.

``optional=True``: without a working C compiler the install still succeeds and ``pipelines.fast_bpe`` falls back to
the ``tokenizers`` library.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pipelines._bpe",
            ["pipelines/_bpe.c"],
            optional=True,
            extra_compile_args=["-O3", "-std=gnu11", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ]
)
