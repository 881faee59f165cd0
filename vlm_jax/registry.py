"""Name -> builder registries for models, objectives, datasets and evaluators.

Configs hold names, never import paths; `Registry.get` fails at config-load time with the list of
known names, before any device is touched.
"""
from typing import Callable, Dict

from vlm_jax.errors import ConfigError  # noqa: F401  (re-exported: modules import it from here too)


class Registry:

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, Callable] = {}

  def register(self, name: str):
    def decorator(fn):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = fn
      return fn
    return decorator

  def get(self, name: str) -> Callable:
    _import_builtins()
    if name not in self._entries:
      raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
    return self._entries[name]

  def names(self):
    _import_builtins()
    return sorted(self._entries)


MODELS = Registry("model")
OBJECTIVES = Registry("objective")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")


def _import_builtins():
  # The built-in entries register themselves on import; importing here keeps `registry` free of
  # import cycles while making every lookup see them.
  from vlm_jax import data, eval, models, objectives  # noqa: F401  pylint: disable=redefined-builtin,import-outside-toplevel
