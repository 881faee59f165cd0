"""Name -> builder registries for models, objectives, datasets and evaluators.

Configs hold names, never import paths; `Registry.get` fails at config-load time with the list of
known names, before any device is touched. This module imports nothing of the project but its errors:
the built-in entries register themselves when `vlm_jax.builtins` is imported, which every entry point does.
"""

from collections.abc import Callable

from vlm_jax.errors import ConfigError


class Registry:
  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, Callable] = {}

  def register(self, name: str):
    def decorator(fn):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = fn
      return fn

    return decorator

  def get(self, name: str) -> Callable:
    if name not in self._entries:
      hint = (
        ""
        if self._entries
        else " (none registered: `import vlm_jax.builtins` registers the built-in ones)"
      )
      raise ConfigError(
        f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}{hint}"
      )
    return self._entries[name]

  def names(self):
    return sorted(self._entries)


MODELS = Registry("model")
OBJECTIVES = Registry("objective")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")
