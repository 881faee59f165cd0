"""Renders every recipe's card (`CARD` in experiments/*.py) into docs/recipes.md, between its markers.

python -m vlm_jax.tools.recipe_cards --write docs/recipes.md
"""

import os
import sys

from vlm_jax import recipe_card

if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] != "--write":
    raise SystemExit("usage: python -m vlm_jax.tools.recipe_cards --write docs/recipes.md")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  changed = recipe_card.write_docs(sys.argv[2], os.path.join(root, "experiments"))
  print(f"{sys.argv[2]}: {'updated' if changed else 'already up to date'}")
