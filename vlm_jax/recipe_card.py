"""Recipe cards: what a recipe's reference does, setting by setting, checked against the recipe's config.

A recipe file (`experiments/*.py`) defines `CARD = Card(...)`: its reference (repository, file and commit,
or the paper's table), and for each training setting (a config path) the reference's value and where it
comes from. `reference_variant` is the variant that is the reference's training; every other variant
lists what it changes and why (e.g. the embedded-data `tiny` variants). `tests/test_recipe_cards.py`
builds every variant and compares it with its card, so a setting that drifts from the card fails.

  python -m vlm_jax.tools.recipe_cards --write docs/recipes.md

renders every card into docs/recipes.md, between its `recipe-cards` markers.
"""

import dataclasses
import importlib.util
import math
import os
import re

BEGIN, END = "<!-- recipe-cards: begin -->", "<!-- recipe-cards: end -->"
RECIPES = (
  "clip_b32",
  "clip_l14",
  "siglip_b16",
  "siglip_so400m",
  "lit_b16",
  "coca_b32",
  "vilt_b32",
  "flava_b16",
  "simvlm_base",
  "cappa_b16",
  "prefixlm_b16",
  "llava_stages",
)


SCANNED = (
  "one compiled block per stack, as big_vision's and maxtext's large configs: compile time that does "
  "not grow with depth"
)
UNROLLED = (
  "the embedded data on 2 CPU cores: 2 to 4 layers compile in seconds unrolled, and the recipe's "
  "measured results were trained so"
)
ON_CPU = {"model.scan_layers": (False, UNROLLED), "model.remat": ("none", UNROLLED)}


def at_scale(remat: str, measured: str) -> dict:
  """Card settings of scanned layers rematerialised with `remat`, the policy `measured` chose (the
  compile at the reference's batch on a TPU pod: docs/benchmarks.md)."""
  return {"model.scan_layers": (True, SCANNED), "model.remat": (remat, measured)}


@dataclasses.dataclass(frozen=True)
class Card:
  reference: str  # the repository, file and commit (or the paper's table) the recipe reproduces
  settings: dict  # config path -> (the reference's value, where it comes from)
  variants: dict = dataclasses.field(default_factory=dict)  # variant -> {path: (value, why)}
  reference_variant: str = "base"
  notes: tuple = ()  # what vlm_jax cannot reproduce, said plainly

  def expected(self, variant: str) -> dict:
    """path -> value a variant's config must hold."""
    values = {path: value for path, (value, _) in self.settings.items()}
    if variant != self.reference_variant:
      values.update({path: value for path, (value, _) in self.variants.get(variant, {}).items()})
    return values

  def mismatches(self, config, variant: str) -> list:
    """Lines naming each setting whose config value differs from the card."""
    lines = []
    for path, want in self.expected(variant).items():
      got = lookup(config, path)
      if not same(got, want):
        lines.append(f"{path}: config has {got!r}, the card says {want!r}")
    return lines

  def markdown(self, name: str) -> str:
    rows = [
      f"### `{name}.py` (reference variant: `{self.reference_variant}`)",
      "",
      f"Reference: {self.reference}",
      "",
      "| setting | value | source |",
      "|---|---|---|",
    ]
    cell = lambda text: text.replace("|", "\\|")  # a regex's alternatives inside a table cell
    rows += [
      f"| `{p}` | `{cell(show(v))}` | {cell(src)} |" for p, (v, src) in self.settings.items()
    ]
    for variant, changes in self.variants.items():
      rows += ["", f"`:{variant}` differs in:", ""]
      rows += [f"- `{p}` = `{show(v)}`: {why}" for p, (v, why) in changes.items()]
    if self.notes:
      rows += [""] + [f"- {note}" for note in self.notes]
    return "\n".join(rows)


def lookup(config, path: str):
  """config's value at `a.b.c`; `[i]` indexes a list and `[x.y]` a dict whose keys hold dots
  (`stages[1].overrides[optim.lr]`)."""
  node = config
  for name, bracket in re.findall(r"([^.\[\]]+)|\[([^\]]+)\]", path):
    node = node[int(bracket) if bracket.isdigit() else bracket] if bracket else node[name]
  return node


def _plain(value):
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


def same(got, want) -> bool:
  got, want = _plain(got), _plain(want)
  if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=0.0)
  if isinstance(want, tuple) and isinstance(got, tuple) and len(got) == len(want):
    return all(same(g, w) for g, w in zip(got, want))
  return type(got) is type(want) and got == want


def show(value) -> str:
  value = _plain(value)
  if isinstance(value, float):
    return f"{value:.6g}"
  if isinstance(value, tuple):
    return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value) if isinstance(value, str) else str(value)


def load_recipe(path: str):
  """The recipe module at `path` (experiments/NAME.py)."""
  spec = importlib.util.spec_from_file_location(f"vlm_jax_recipe_{os.path.basename(path)}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def render(experiments_dir: str) -> str:
  """Every recipe's card, in RECIPES order."""
  cards = [
    load_recipe(os.path.join(experiments_dir, f"{name}.py")).CARD.markdown(name) for name in RECIPES
  ]
  return "\n\n".join(cards)


def write_docs(doc_path: str, experiments_dir: str) -> bool:
  """Replaces the text between the markers of `doc_path` with the rendered cards; True if it changed."""
  with open(doc_path) as f:  # local path: a file of this repository
    text = f.read()
  if BEGIN not in text or END not in text:
    raise SystemExit(f"{doc_path} has no {BEGIN} ... {END} markers")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  new = f"{head}{BEGIN}\n{render(experiments_dir)}\n{END}{tail}"
  if new != text:
    with open(doc_path, "w") as f:  # local path: a file of this repository
      f.write(new)
  return new != text
