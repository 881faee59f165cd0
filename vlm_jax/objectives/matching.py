"""Image-text matching (ITM) with random and hard in-batch negatives, and masked language modeling (MLM).

ITM: each example keeps its image with probability 1 - `negative_rate`, else is paired with another image
of the batch: a random one, the hardest one (the highest `match_scores` among images that are not its
match), or either ('mixed', hard with probability `hard_fraction`). The model classifies matching vs not.
Texts identical to the anchor's count as matching, so a duplicate caption is never used as a negative.
"""
import jax
import jax.numpy as jnp
import optax

from vlm_jax.objectives import masking
from vlm_jax.registry import OBJECTIVES, ConfigError

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


@OBJECTIVES.register("itm")
def build_itm_objective(config, *, mesh, tokenizer=None):
  """config: negative_rate (default 0.5), negatives: random | hard | mixed, hard_fraction (mixed, 0.5)."""
  del mesh, tokenizer
  rate = float(config.get("negative_rate", 0.5))
  mode = config.get("negatives", "hard")
  if mode not in NEGATIVE_MODES:
    raise ConfigError(f"unknown itm negatives {mode!r}; known: {', '.join(NEGATIVE_MODES)}")
  hard_fraction = float(config.get("hard_fraction", 0.5))

  def loss_fn(params, batch, rng, *, model, train):
    images, tokens = batch["image"], batch["text"]
    pick_rng, swap_rng, dropout_rng = jax.random.split(rng, 3)
    same_text = jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)
    if mode == "random":
      scores = jnp.zeros(same_text.shape)
    else:
      scores = model.apply({"params": params}, images, tokens, method="match_scores")
    index, hard = choose_negatives(pick_rng, scores, same_text, mode=mode, hard_fraction=hard_fraction)
    negative = (jax.random.uniform(swap_rng, index.shape) < rate) & (index != jnp.arange(index.shape[0]))
    paired = jnp.where(negative[:, None, None, None], images[index], images)
    logits = model.apply({"params": params}, paired, tokens, train=train, method="itm_logits",
                         rngs={"dropout": dropout_rng})
    labels = (~negative).astype(jnp.int32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"itm_loss": loss, "itm_acc": jnp.mean(jnp.argmax(logits, -1) == labels),
                  "itm_negatives": negative.sum().astype(jnp.float32),
                  "itm_hard_negatives": (negative & hard).sum().astype(jnp.float32)}

  return loss_fn


def mlm_setup(config, tokenizer):
  """(mask(rng, batch) -> (masked tokens, selected), the batch keys it needs) from an MLM-style config:
  rate (0.15), whole_word (True: words are masked whole, using the tokenizer's word boundaries)."""
  if tokenizer is None or tokenizer.mask_id < 0:
    raise ConfigError(f"masked language modeling needs a tokenizer with a mask token; {type(tokenizer).__name__} "
                      "has none (the embedded SentencePiece model and the byte tokenizer have one)")
  rate = float(config.get("rate", 0.15))
  whole_word = bool(config.get("whole_word", True))
  special_ids = tuple(i for i in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.mask_id)
                      if i is not None and i >= 0)

  def mask(rng, batch):
    return masking.mask_tokens(rng, batch["text"], rate=rate, mask_id=tokenizer.mask_id,
                               vocab_size=tokenizer.vocab_size, special_ids=special_ids,
                               word_start=batch["word_start"] if whole_word else None)

  return mask, ({"word_start"} if whole_word else set())


@OBJECTIVES.register("mlm")
def build_mlm_objective(config, *, mesh, tokenizer=None):
  """Masked language modeling. config: rate (0.15), whole_word (True), method (the model method giving
  [batch, length, vocab] logits from (images, tokens); default 'mlm_logits')."""
  del mesh
  mask, batch_keys = mlm_setup(config, tokenizer)
  method = config.get("method", "mlm_logits")

  def loss_fn(params, batch, rng, *, model, train):
    mask_rng, dropout_rng = jax.random.split(rng)
    tokens = batch["text"]
    masked, selected = mask(mask_rng, batch)
    logits = model.apply({"params": params}, batch["image"], masked, train=train, method=method,
                         rngs={"dropout": dropout_rng})
    weights = selected.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy_with_integer_labels(logits, tokens) * weights).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == tokens) * weights).sum() / count
    return loss, {"mlm_loss": loss, "mlm_acc": accuracy, "mlm_masked_fraction": weights.sum() / tokens.size}

  loss_fn.batch_keys = batch_keys
  return loss_fn
