"""Model builders registered by name: `build(model_config, vocab_size) -> flax module`."""
from vlm_jax.models import layers, text, two_tower, vit
from vlm_jax.registry import MODELS


def shared_fields(config):
  return dict(dtype=layers.dtype_of(config.dtype), param_dtype=layers.dtype_of(config.param_dtype))


def tower_options(config):
  return dict(remat=config.remat, scan=config.scan_layers)


@MODELS.register("clip")
def build_clip(config, vocab_size: int):
  """CLIP: ViT image tower + causal text tower with end-of-text pooling."""
  image = {**vit.parse_variant(config.image.variant), **tower_options(config),
           **{k: v for k, v in config.image.items() if k != "variant"}}
  txt = {**text.parse_variant(config.text.variant), **tower_options(config),
         **{k: v for k, v in config.text.items() if k != "variant"}, "vocab_size": text.pad_vocab(vocab_size)}
  return two_tower.TwoTower(image=image, text=txt, embed_dim=config.embed_dim, **shared_fields(config))
