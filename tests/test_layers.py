"""The layer rule of docs/design.md, read from the source: which package may import which, no import circles,
and a registry that imports nothing of the project."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "vlm_jax"

# Lowest first. A module may import its own package and anything in a lower layer; the components (layer 3)
# never import one another. Every tool (a module run with `python -m`) is in the top layer by where its
# file is: the package root's entry points or vlm_jax/tools/.
LAYERS = (
  {"errors", "flag_spelling"},
  {
    "registry",
    "requests",
    "storage",
    "durations",
    "cli",
    "config_utils",
    "defaults",
    "recipe_card",
  },
  {"core"},
  {"models", "data", "objectives", "generate"},
  {"assembly"},
  {"eval"},
  {"train"},
  {
    "builtins",
    "inference",
    "main",
    "evaluate",
    "export",
    "tables",
    "convert",
    "launch",
    "tools",
    "__init__",
  },
)
COMPONENTS = 3
TOP = len(LAYERS) - 1


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(("vlm_jax",) + parts)
    yield name.removesuffix(".__init__"), path


def _imports(name, path):
  """Every vlm_jax module `name` imports, at any depth of its code, resolved to a module when it is one."""
  known = {n for n, _ in _modules()}
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith("vlm_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlm_jax"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        yield sub if sub in known else node.module


def _unit(module: str) -> str:
  """The package (or top-level module) a module belongs to: vlm_jax.data.sources -> data."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _is_tool(name, path) -> bool:
  return path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text()


def _layer(name, path) -> int:
  unit = _unit(name)
  return next(i for i, units in enumerate(LAYERS) if unit in units)


def test_every_tool_is_in_the_top_layer():
  misplaced = [n for n, p in _modules() if _is_tool(n, p) and _layer(n, p) != TOP]
  assert not misplaced, (
    f"move these tools to vlm_jax/tools/ (python -m vlm_jax.tools.NAME): {misplaced}"
  )


def test_every_module_has_a_layer():
  units = {_unit(n) for n, _ in _modules()}
  assert units <= set().union(*LAYERS), (
    f"add {units - set().union(*LAYERS)} to LAYERS and to docs/design.md"
  )


def test_imports_follow_the_layer_rule():
  paths = dict(_modules())
  errors = []
  for name, path in paths.items():
    source_layer, source_unit = _layer(name, path), _unit(name)
    for target in _imports(name, path):
      target_unit = _unit(target)
      if target_unit == source_unit:
        continue
      target_layer = next(i for i, units in enumerate(LAYERS) if target_unit in units)
      if target_layer > source_layer or (target_layer == source_layer == COMPONENTS):
        errors.append(f"{name} (layer {source_layer}) imports {target} (layer {target_layer})")
  assert not errors, "\n".join(errors)


def test_no_import_circles():
  paths = dict(_modules())
  graph = {
    name: {t for t in _imports(name, path) if t in paths and t != name}
    for name, path in paths.items()
  }
  # A package's __init__ is imported before any of its modules: count that edge too.
  for name in paths:
    parent = name.rsplit(".", 1)[0]
    if parent in paths and parent not in (
      name,
      "vlm_jax",
    ):  # the root imports nothing when imported
      graph[name].add(parent)
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(v):  # Tarjan's strongly connected components
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      # A package and its own modules form a benign circle (the package's __init__ imports its modules).
      if len({_unit(m) for m in component}) > 1:
        circles.append(sorted(component))

  sys.setrecursionlimit(10000)
  for v in graph:
    if v not in index:
      visit(v)
  assert not circles, circles


def test_registry_imports_nothing_of_the_project():
  code = (
    "import sys; from vlm_jax import registry; "
    "print(sorted(m for m in sys.modules if m.startswith('vlm_jax')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent
  ).stdout
  assert out.strip() == "['vlm_jax', 'vlm_jax.errors', 'vlm_jax.registry']"
  from vlm_jax import registry  # pylint: disable=import-outside-toplevel

  empty = registry.Registry("widget")
  try:
    empty.get("x")
  except registry.ConfigError as e:
    assert "vlm_jax.builtins" in str(e)
  else:
    raise AssertionError("an empty registry found a name")
