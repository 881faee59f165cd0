"""CoCa's objective: contrastive + captioning from one forward pass. Captioning is the prefix-LM loss with an
empty prefix (`base.next_token_loss` without a prefix length)."""

from vlm_jax.objectives import contrastive
from vlm_jax.objectives.base import Objective, need, next_token_loss, normalization
from vlm_jax.registry import OBJECTIVES


@OBJECTIVES.register("coca")
def build_coca_objective(config, context):
  """contrastive_weight x CLIP loss + caption_weight x captioning loss.

  config: contrastive_weight (default 1), caption_weight (default 2, as in the paper), impl (the CLIP
  loss implementation: global | local), normalize (per_token, open_clip's CoCaLoss: the mean over every
  caption token of the batch | per_example). Padding (the tokenizer's pad id) is ignored.
  """
  impl = config.get("impl", "global")
  contrastive_weight = float(config.get("contrastive_weight", 1.0))
  caption_weight = float(config.get("caption_weight", 2.0))
  normalize = normalization(config)
  pad_id = context.tokenizer.pad_id if context.tokenizer is not None else 0

  def loss(outputs, inputs):
    logits = need(
      outputs, "caption_logits", "coca", "use a model with a caption decoder (model.name 'coca')"
    )
    clip, metrics = contrastive.clip_loss(
      outputs["image_emb"],
      outputs["text_emb"],
      outputs["logit_scale"],
      impl=impl,
      mesh=context.mesh,
    )
    caption, accuracy, count = next_token_loss(
      logits, inputs["text"], pad_id=pad_id, normalize=normalize
    )
    value = contrastive_weight * clip + caption_weight * caption
    return value, {
      **metrics,
      "clip_loss": clip,
      "caption_loss": caption,
      "caption_token_acc": accuracy,
      "caption_tokens": count,
    }

  return Objective(loss)
