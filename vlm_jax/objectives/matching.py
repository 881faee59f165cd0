"""Image-text matching (ITM) with random and hard in-batch negatives, and masked language modeling (MLM).

ITM: each example keeps its image with probability 1 - `negative_rate`, else is paired with another image
of the batch: a random one, the hardest one (the highest [text, image] score the model computes in its
forward pass: FLAVA's contrastive similarities, ViLT's unimodal encodings, among images that are not its
match), or either ('mixed', hard with probability `hard_fraction`). The model classifies matching vs not.
Texts identical to the anchor's count as matching, so a duplicate caption is never used as a negative.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax.errors import ConfigError
from vlm_jax.objectives import masking
from vlm_jax.objectives.base import Objective, Request, need, token_cross_entropy
from vlm_jax.registry import OBJECTIVES
from vlm_jax.requests import MaskedText

NEGATIVE_MODES = ("random", "hard", "mixed")


def choose_negatives(rng, scores, same_text, *, mode: str, hard_fraction: float = 0.5):
  """Index of a non-matching image per text.

  scores: [text, image] similarities; same_text: [text, text] bool, True where two captions are identical
  (including the diagonal): those images match the text and are never chosen.
  Returns (indices [batch], hard [batch] bool: chosen as the hardest).
  """
  n = scores.shape[0]
  allowed = ~same_text
  random_rng, mix_rng = jax.random.split(rng)
  # Random: uniform over allowed images (Gumbel-max over a constant score).
  gumbel = jax.random.gumbel(random_rng, (n, n))
  random_pick = jnp.argmax(jnp.where(allowed, gumbel, -jnp.inf), axis=1)
  hard_pick = jnp.argmax(jnp.where(allowed, scores, -jnp.inf), axis=1)
  if mode == "random":
    hard = jnp.zeros((n,), bool)
  elif mode == "hard":
    hard = jnp.ones((n,), bool)
  elif mode == "mixed":
    hard = jax.random.uniform(mix_rng, (n,)) < hard_fraction
  else:
    raise ConfigError(f"unknown itm negatives {mode!r}; known: {', '.join(NEGATIVE_MODES)}")
  # A batch in which every caption is the same has no negative: keep the positive (label stays 1).
  has_negative = allowed.any(axis=1)
  index = jnp.where(hard, hard_pick, random_pick)
  return jnp.where(has_negative, index, jnp.arange(n)), hard & has_negative


@dataclasses.dataclass(frozen=True)
class ItmPairing:
  """The ITM request the model receives: `pairing(scores)` -> (image index per text, negative, hard), where
  `scores` are [text, image] similarities the model computes once (FLAVA: its contrastive ones) when
  `needs_scores`. A text's image is its own (index i, a positive) or a chosen negative."""

  rng: jax.Array
  tokens: jax.Array
  mode: str
  rate: float
  hard_fraction: float

  @property
  def needs_scores(self) -> bool:
    return self.mode != "random"

  def __call__(self, scores=None):
    pick_rng, swap_rng = jax.random.split(self.rng)
    tokens = self.tokens
    same_text = jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)
    if scores is None:
      scores = jnp.zeros(same_text.shape)
    index, hard = choose_negatives(
      pick_rng,
      jax.lax.stop_gradient(scores),
      same_text,
      mode=self.mode,
      hard_fraction=self.hard_fraction,
    )
    own = jnp.arange(index.shape[0])
    negative = (jax.random.uniform(swap_rng, index.shape) < self.rate) & (index != own)
    return jnp.where(negative, index, own), negative, negative & hard


@OBJECTIVES.register("itm")
def build_itm_objective(config, context):
  """config: negative_rate (default 0.5), negatives: random | hard | mixed, hard_fraction (mixed, 0.5)."""
  del context
  rate = float(config.get("negative_rate", 0.5))
  mode = config.get("negatives", "hard")
  if mode not in NEGATIVE_MODES:
    raise ConfigError(f"unknown itm negatives {mode!r}; known: {', '.join(NEGATIVE_MODES)}")
  hard_fraction = float(config.get("hard_fraction", 0.5))

  def draw(rng, batch):
    return ItmPairing(rng, batch["text"], mode, rate, hard_fraction)

  def loss(outputs, inputs):
    del inputs
    logits = need(outputs, "itm_logits", "itm", "use a fusion model (vilt, flava)")
    negative = outputs["itm_negative"]
    labels = (~negative).astype(jnp.int32)
    value = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels
    ).mean()
    return value, {
      "itm_loss": value,
      "itm_acc": jnp.mean(jnp.argmax(logits, -1) == labels),
      "itm_negatives": negative.sum().astype(jnp.float32),
      "itm_hard_negatives": outputs["itm_hard"].sum().astype(jnp.float32),
    }

  return Objective(loss, requests={"itm": Request(draw, ("itm", mode, rate, hard_fraction))})


def word_starts(example, out, preprocess, rng):
  """Host side of whole-word masking: where each word of the tokenised caption begins."""
  del example, rng
  return {"word_start": preprocess.tokenizer.word_starts(out["text"])}


def text_masking(config, tokenizer, max_len: int, *, rate_key: str = "rate"):
  """The `masked_text` request of an MLM-style config and its host-side needs: (Request, batch fields,
  prepare). config: rate (0.15), whole_word (True: words are masked whole, using the tokenizer's word
  boundaries), max_predictions (default: twice the expected count plus two)."""
  if tokenizer is None or tokenizer.mask_id < 0:
    raise ConfigError(
      f"masked language modeling needs a tokenizer with a mask token; {type(tokenizer).__name__} "
      "has none (the embedded SentencePiece model and the byte tokenizer have one)"
    )
  rate = float(config.get(rate_key, 0.15))
  whole_word = bool(config.get("whole_word", True))
  count = int(config.get("max_predictions", 0) or masking.default_max_predictions(max_len, rate))
  special_ids = tuple(
    i
    for i in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id)
    if i is not None and i >= 0
  )

  def draw(rng, batch):
    tokens = batch["text"]
    masked, selected = masking.mask_tokens(
      rng,
      tokens,
      rate=rate,
      mask_id=tokenizer.mask_id,
      vocab_size=tokenizer.vocab_size,
      special_ids=special_ids,
      word_start=batch["word_start"] if whole_word else None,
      max_predictions=count,
    )
    positions, weights = masking.selected_positions(selected, count)
    targets = jnp.take_along_axis(tokens, positions, axis=-1)
    return MaskedText(masked, selected, positions, weights, targets)

  fields = {"word_start": ((max_len,), np.bool_)} if whole_word else {}
  return (
    Request(draw, ("masked_text", rate, whole_word, count)),
    fields,
    (word_starts if whole_word else None),
  )


@OBJECTIVES.register("mlm")
def build_mlm_objective(config, context):
  """Masked language modeling. config: rate (0.15), whole_word (True), max_predictions, method (the model
  output with [batch, max_predictions, vocab] logits at the masked positions; default 'mlm_logits')."""
  request, fields, prepare = text_masking(config, context.tokenizer, context.max_len)
  output = config.get("method", "mlm_logits")

  def loss(outputs, inputs):
    masked = inputs["masked_text"]
    logits = need(
      outputs,
      output,
      "mlm",
      "a fusion model (vilt: mlm_logits, flava: text_mlm_logits) or a "
      "two-tower model with model.text_mlm_head=True (text_mlm_logits)",
    )
    value, accuracy, count = token_cross_entropy(logits, masked.targets, masked.weights)
    return value, {
      "mlm_loss": value,
      "mlm_acc": accuracy,
      "mlm_masked_fraction": count / inputs["text"].size,
    }

  return Objective(loss, requests={"masked_text": request}, batch_fields=fields, prepare=prepare)
