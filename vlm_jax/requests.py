"""The model-objective contract: the typed inputs an objective asks a model for besides the batch.

An objective declares `requests` (name -> `objectives.base.Request`), drawn on device once per step from
the step RNG; the model's one forward pass, `model(images, tokens, train, requests)`, reads them by name
and returns the outputs the losses read:

| request name  | value                              | the model returns                                      |
|---------------|------------------------------------|--------------------------------------------------------|
| `lm/<key>`    | `LMRequest`                        | `lm/<key>`: logits [batch, length, vocab]; position t  |
|               |                                    | predicts tokens[:, t + 1]                              |
| `masked_text` | `MaskedText`                       | MLM logits at `positions` (`mlm_logits`, ...)          |
| `patch_mask`  | `PatchMask`                        | MIM predictions (`image_mim`, `mm_mim`)                |
| `itm`         | a pairing (`objectives.matching`)  | `itm_logits`, `itm_negative`, `itm_hard`               |

Models and objectives both import this module and never each other (docs/design.md, the layer rule).
"""

from typing import Any

import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class LMRequest:
  """A text to score as a prefix-LM: the first `prefix_len` tokens of each row (>= 1: the start token)
  are the bidirectional prefix with the image, the rest is predicted.

  inputs: the tokens the decoder reads, when they differ from `tokens`; parallel: [batch] bool, rows
  whose decoder reads only the model's mask token and attends to every position (CapPa's parallel
  prediction); text_only: the image is hidden (a text-only batch)."""

  tokens: Any  # [batch, length] int
  prefix_len: Any  # [batch] int
  inputs: Any = None
  parallel: Any = None
  text_only: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def caption(cls, tokens):
    """Captioning: only the start token joins the image in the prefix."""
    return cls(tokens, jnp.ones(tokens.shape[:1], jnp.int32))


@flax.struct.dataclass
class MaskedText:
  """Masked language modeling's draw: the text with some tokens masked, and where."""

  tokens: Any  # [batch, length]: the masked text the model reads
  selected: Any  # [batch, length] bool: the masked positions
  positions: Any  # [batch, max_predictions]: their indices (padded), where the model predicts
  weights: Any  # [batch, max_predictions]: 1 where `positions` is a real masked position
  targets: Any  # [batch, max_predictions]: the original tokens there


@flax.struct.dataclass
class PatchMask:
  """Masked image modeling's draw: [batch, patches] bool, True where a patch is replaced by the mask
  token."""

  mask: Any


def lm_requests(requests) -> dict:
  """The `lm/<key>` requests of a forward pass, checked to be `LMRequest`s."""
  found = {name: r for name, r in (requests or {}).items() if name.startswith("lm/")}
  for name, r in found.items():
    if not isinstance(r, LMRequest):
      raise TypeError(f"request {name!r} is a {type(r).__name__}; lm/* requests are LMRequests")
  return found


def token_valid(tokens, pad_id: int):
  """True where a token is not padding (a negative pad_id: every token is real, e.g. the CLIP BPE)."""
  return tokens != pad_id if pad_id >= 0 else jnp.ones(tokens.shape, bool)


@flax.struct.dataclass
class DecoderInputs:
  """What a model's decoder reads for an `LMRequest` (`decoder_inputs`)."""

  tokens: Any  # [batch, length]: the input tokens, the mask token in parallel rows
  valid: Any  # [batch, length] bool: real tokens; every position of a parallel row
  bidirectional: Any  # [batch] bool: rows that attend to every position (parallel), or None


def decoder_inputs(request: LMRequest, *, pad_id: int, mask_token_id: int | None) -> DecoderInputs:
  """The one place an `LMRequest` becomes decoder inputs, shared by every model serving `lm/*`: the
  decoder reads `inputs` (default: `tokens`); a parallel row reads only the mask token, and all its
  positions are valid (so the caption's length is not given away) and see one another."""
  tokens = request.tokens if request.inputs is None else request.inputs
  valid = token_valid(request.tokens, pad_id)
  if request.parallel is None:
    return DecoderInputs(tokens, valid, None)
  if mask_token_id is None:
    raise ValueError("parallel prediction needs a model with a mask token")
  rows = request.parallel[:, None]
  return DecoderInputs(jnp.where(rows, mask_token_id, tokens), valid | rows, request.parallel)
