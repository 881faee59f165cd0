"""The train state: everything a resumed run needs besides the data position."""

from typing import Any

from flax import struct
import jax


class TrainState(struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 root key; the step's key is fold_in(rng, step)
