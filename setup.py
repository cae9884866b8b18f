"""The one build step pyproject.toml cannot say stably: our only C extension.

``are_core.router._ranking`` is the router's ranking loop in C (see
are_core/router/_ranking.c), measured worth it in benchmarks/README.md. It is
optional: without a C compiler the install goes on and the router ranks with
numpy, giving the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "are_core.router._ranking",
            sources=["are_core/router/_ranking.c"],
            optional=True,
            extra_compile_args=["-O3", "-ffp-contract=off"],
        )
    ]
)
