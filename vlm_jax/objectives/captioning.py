"""Captioning (next-token cross-entropy) and CoCa's contrastive + captioning objective."""
import jax.numpy as jnp
import optax

from vlm_jax.objectives import contrastive
from vlm_jax.registry import OBJECTIVES, ConfigError


def caption_loss(logits, tokens, pad_id: int = 0):
  """Teacher-forced next-token loss: logits[:, t] predicts tokens[:, t + 1]; padding targets are ignored.

  Returns (mean loss over real target tokens, token accuracy, number of target tokens).
  """
  logits, targets = logits[:, :-1].astype(jnp.float32), tokens[:, 1:]
  weights = (targets != pad_id).astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  accuracy = ((jnp.argmax(logits, axis=-1) == targets) * weights).sum() / count
  return (losses * weights).sum() / count, accuracy, weights.sum()


@OBJECTIVES.register("coca")
def build_coca_objective(config, *, mesh, tokenizer=None):
  """CoCa: contrastive_weight x CLIP loss + caption_weight x captioning loss, from one forward pass.

  config: contrastive_weight (default 1), caption_weight (default 2, as in the paper), impl (the CLIP
  loss implementation: global | local). Padding (the tokenizer's pad id) is ignored.
  """
  clip_impl = contrastive.clip_implementation(config.get("impl", "global"), mesh)
  contrastive_weight = float(config.get("contrastive_weight", 1.0))
  caption_weight = float(config.get("caption_weight", 2.0))
  pad_id = tokenizer.pad_id if tokenizer is not None else 0

  def loss_fn(params, batch, rng, *, model, train):
    out = model.apply({"params": params}, batch["image"], batch["text"], train=train, rngs={"dropout": rng})
    if "caption_logits" not in out:
      raise ConfigError("the coca objective needs a model with a caption decoder (model.name 'coca')")
    clip, metrics = clip_impl(out["image_emb"], out["text_emb"], out["logit_scale"])
    caption, accuracy, count = caption_loss(out["caption_logits"], batch["text"], pad_id)
    loss = contrastive_weight * clip + caption_weight * caption
    return loss, {**metrics, "clip_loss": clip, "caption_loss": caption, "caption_token_acc": accuracy,
                  "caption_tokens": count}

  return loss_fn
