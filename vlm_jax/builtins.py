"""Registers every built-in model, objective, dataset and evaluator with `vlm_jax.registry`.

The registry itself imports nothing of the project, so this one explicit import is what fills it; every
entry point (`main`, `python -m vlm_jax.evaluate`, `vlm_jax.load`, the tools) imports it first.
"""

from vlm_jax import data, eval, models, objectives  # noqa: F401  pylint: disable=redefined-builtin,unused-import
from vlm_jax.data import benchmarks  # noqa: F401  pylint: disable=unused-import  (the standard eval sets)
