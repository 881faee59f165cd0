"""Model builders registered by name: `build(model_config, vocab_size) -> flax module`.

Every model's parameters of the image tower are named `image_*` and those of the text tower `text_*`, so
`model.locked = ('image',)` (LiT) can freeze a tower by name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.errors import ConfigError
from vlm_jax.models import coca, flava, fusion, layers, prefix_lm, simvlm, text, two_tower, vit
from vlm_jax.registry import MODELS

TWO_TOWER_FIELDS = (
  "embed_dim",
  "logit_scale_init",
  "logit_scale_max",
  "logit_scale_min",
  "logit_scale_clamp",
  "logit_bias_init",
  "image_head",
  "text_head_bias",
  "locked",
  "text_mlm_head",
)


DTYPES = ("float32", "bfloat16", "float16")
IMAGE_POOLS = ("cls", "gap", "map", "none", "unpooled")
TEXT_POOLS = ("eot", "argmax", "last", "first", "mean", "none")


def _choice(key: str, value, choices, hint: str = ""):
  if value not in choices:
    raise ConfigError(
      f"{key}={value!r} is not one of: {', '.join(map(str, choices))}"
      + (f" ({hint})" if hint else "")
    )


def check_config(config, platform: str | None = None):
  """Every enumerated model setting (remat, dtypes, attention, pooling, activations, tower sizes) against
  its choices, in one line naming the key, the value and the choices: before anything is built.
  `platform`: where the step will run (cuDNN attention needs a GPU)."""
  MODELS.get(config.name)
  _choice("model.remat", config.get("remat", "none"), tuple(layers.REMAT_POLICIES))
  _choice("model.dtype", config.get("dtype", "float32"), ("auto",) + DTYPES)
  _choice("model.param_dtype", config.get("param_dtype", "float32"), DTYPES)
  _choice("model.attention", attention_of(config), layers.ATTENTION_IMPLEMENTATIONS)
  platform = platform or jax.default_backend()
  if attention_of(config) == "cudnn" and platform not in ("gpu", "cuda"):
    raise ConfigError(
      f"model.attention='cudnn' needs a GPU, and this step runs on {platform}; use auto (cuDNN on "
      "GPUs, XLA elsewhere)"
    )
  _choice(
    "model.logit_scale_clamp",
    config.get("logit_scale_clamp", "forward"),
    two_tower.LOGIT_SCALE_CLAMPS,
  )
  _choice("model.head", config.get("head", "tied"), simvlm.HEADS)
  towers = {name: config.get(name) for name in ("image", "text", "encoder", "decoder")}
  for name, tower in towers.items():
    if not tower:
      continue
    if "variant" in tower:
      try:
        if name == "image":
          vit.parse_variant(tower.variant)
        elif name == "text":
          text.parse_variant(tower.variant)
        else:
          _choice(f"model.{name}.variant", tower.variant, tuple(vit.SIZES))
      except ValueError as e:
        raise ConfigError(f"model.{name}.variant: {e}") from None
    if "act" in tower:
      _choice(f"model.{name}.act", tower.act, tuple(layers.ACTIVATIONS))
    if "pool" in tower and name in ("image", "text"):
      _choice(f"model.{name}.pool", tower.pool, IMAGE_POOLS if name == "image" else TEXT_POOLS)


def build(config, vocab_size: int, platform: str | None = None):
  """The registered model `config.name`, with "auto" settings resolved for `platform` (the devices it
  will run on; default: this process's backend, which differs from the target when compiling for a TPU
  topology on a CPU host)."""
  return MODELS.get(config.name)(resolved(config, platform), vocab_size=vocab_size)


def resolved(config, platform: str | None = None):
  """A copy of a model config with dtype "auto" made concrete (bfloat16 on accelerators)."""
  if config.get("dtype", "float32") != "auto":
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.dtype = jnp.dtype(layers.compute_dtype("auto", platform)).name
  return config


def attention_of(config) -> str:
  return config.get("attention", "auto")  # configs saved before it existed


def shared_fields(config):
  return dict(
    dtype=layers.compute_dtype(config.dtype), param_dtype=layers.dtype_of(config.param_dtype)
  )


def tower_fields(config, vocab_size: int):
  """(image, text) module fields: the named variant's sizes, overridden by any field the config sets."""
  options = dict(remat=config.remat, scan=config.scan_layers, attention=attention_of(config))
  image = {
    **vit.parse_variant(config.image.variant),
    **options,
    **{k: v for k, v in config.image.items() if k != "variant"},
  }
  # A converted checkpoint fixes its vocabulary size (model.text.vocab_size); otherwise the tokenizer's.
  txt = {
    **text.parse_variant(config.text.variant),
    **options,
    **{k: v for k, v in config.text.items() if k != "variant"},
  }
  txt["vocab_used"] = txt.get("vocab_size") or vocab_size
  # A decoder's mask token (model.text.mask_token, CapPa) is one more input row.
  txt["vocab_size"] = text.pad_vocab(txt["vocab_used"] + bool(txt.get("mask_token", False)))
  for fields in (image, txt):
    if "locked" in fields:
      raise ConfigError(
        "lock a tower with model.locked = ('image',), not inside model.image / model.text"
      )
  return image, txt


def logit_scale_fields(config) -> dict:
  """The learnable temperature's settings a config gives (the model's defaults otherwise)."""
  keys = ("logit_scale_init", "logit_scale_max", "logit_scale_min", "logit_scale_clamp")
  return {k: config[k] for k in keys if k in config}


def after_update(model):
  """What training applies to the parameters after each optimizer step (open_clip's clamp of the logit
  scale parameter, `model.logit_scale_clamp='parameter'`), or None."""
  if getattr(model, "logit_scale_clamp", None) != "parameter":
    return None
  return lambda params: two_tower.clamp_after_update(model, params)


def patch_size(config) -> int:
  """The image tower's patch size in a model config (model.image.patch_size, or the variant's)."""
  image = config.image
  return int(image.get("patch_size") or vit.parse_variant(image.variant)["patch_size"])


def locked_regex(locked) -> str:
  """The parameter paths of locked towers: 'image' -> every 'image_*/...' parameter."""
  return "|".join(f"{tower}_[^/]*/.*" for tower in locked)


@MODELS.register("clip")
@MODELS.register("siglip")
@MODELS.register("two_tower")
def build_two_tower(config, vocab_size: int):
  """CLIP / SigLIP / LiT: ViT image tower + text tower, projections, logit scale (and bias for SigLIP)."""
  image, txt = tower_fields(config, vocab_size)
  fields = {
    k: (tuple(config[k]) if k == "locked" else config[k]) for k in TWO_TOWER_FIELDS if k in config
  }
  return two_tower.TwoTower(image=image, text=txt, **fields, **shared_fields(config))


@MODELS.register("coca")
def build_coca(config, vocab_size: int):
  """CoCa (open_clip's): ViT + attentional pooler, text tower with a class embedding, multimodal decoder."""
  image, txt = tower_fields(config, vocab_size)
  return coca.CoCa(
    image=image,
    text=txt,
    decoder=dict(config.decoder),
    embed_dim=config.embed_dim,
    caption_queries=config.caption_queries,
    pool_heads=config.get("pool_heads", 8),
    locked=tuple(config.get("locked", ())),
    **logit_scale_fields(config),
    **shared_fields(config),
  )


@MODELS.register("prefix_lm")
def build_prefix_lm(config, vocab_size: int):
  """Decoder-only prefix-LM: ViT -> projector (model.projector: linear | mlp) -> one causal/prefix decoder."""
  image, txt = tower_fields(config, vocab_size)
  return prefix_lm.PrefixLM(
    image=image, text=txt, projector_kind=config.get("projector", "mlp"), **shared_fields(config)
  )


@MODELS.register("simvlm")
def build_simvlm(config, vocab_size: int):
  """SimVLM: [image (conv stem, patches); text prefix] encoder, causal decoder with cross-attention."""
  patch = vit.parse_variant(config.image.variant)
  enc = {
    **dict(zip(("width", "depth", "num_heads", "mlp_dim"), vit.SIZES[config.encoder.variant])),
    **{k: v for k, v in config.encoder.items() if k != "variant"},
  }
  dec = {
    **dict(zip(("depth", "num_heads", "mlp_dim"), vit.SIZES[config.decoder.variant][1:])),
    **{k: v for k, v in config.decoder.items() if k != "variant"},
  }
  used = config.text.get("vocab_size") or vocab_size
  mask_token = bool(config.text.get("mask_token", False))  # one more input row: the decoder's mask
  txt = {
    "max_len": config.text.max_len,
    "pad_id": config.text.get("pad_id", 0),
    "vocab_size": text.pad_vocab(used + mask_token),
    "vocab_used": used,
    "mask_token": mask_token,
  }
  image = {
    "patch_size": patch["patch_size"],
    "image_size": config.image.image_size,
    "stem": config.image.get("stem", 0),
  }
  return simvlm.SimVLM(
    image=image,
    text=txt,
    encoder=enc,
    decoder=dec,
    act=config.get("act", "gelu"),
    dropout=config.get("dropout", 0.0),
    ln_eps=config.get("ln_eps", 1e-5),
    encoder_text=config.get("encoder_text", True),
    decoder_bias=config.get("decoder_bias", True),
    head=config.get("head", "tied"),
    remat=config.remat,
    scan=config.scan_layers,
    attention=attention_of(config),
    **shared_fields(config),
  )


def abstract_params(model, image_size: int, max_len: int):
  """The unboxed parameter tree of `model` as ShapeDtypeStructs (no memory is allocated)."""
  boxed = jax.eval_shape(
    lambda: model.init(
      jax.random.PRNGKey(0),
      np.zeros((1, image_size, image_size, 3), np.float32),
      np.zeros((1, max_len), np.int32),
    )["params"]
  )
  return nn.unbox(boxed)


@MODELS.register("vilt")
def build_vilt(config, vocab_size: int):
  """ViLT: one transformer over patch + word embeddings. Its size is model.image.variant ('B/32'); the text
  side sets max_len (and vocab_size for imported weights)."""
  # Sizes from the variant, unless set explicitly (imported checkpoints).
  size = {
    **vit.parse_variant(config.image.variant),
    **{
      k: config.image[k]
      for k in ("width", "depth", "num_heads", "mlp_dim", "patch_size")
      if k in config.image
    },
  }
  txt = config.text
  return fusion.SingleTower(
    vocab_size=text.pad_vocab(txt.get("vocab_size") or vocab_size),
    vocab_used=txt.get("vocab_size") or vocab_size,
    width=size["width"],
    depth=size["depth"],
    num_heads=size["num_heads"],
    mlp_dim=size["mlp_dim"],
    patch_size=size["patch_size"],
    image_size=config.image.image_size,
    max_len=txt.max_len,
    pad_id=txt.get("pad_id", 0),
    act=config.image.get("act", "gelu"),
    ln_eps=config.get("ln_eps", 1e-12),
    dropout=config.get("dropout", 0.0),
    remat=config.remat,
    scan=config.scan_layers,
    attention=attention_of(config),
    **shared_fields(config),
  )


@MODELS.register("flava")
def build_flava(config, vocab_size: int):
  """FLAVA: image, text and multimodal encoders with contrastive, MIM, MLM, MMM and ITM heads."""
  image, txt = tower_fields(config, vocab_size)
  mm = {
    **dict(zip(("width", "depth", "num_heads", "mlp_dim"), vit.SIZES[config.multimodal.variant])),
    "remat": config.remat,
    "scan": config.scan_layers,
    "attention": attention_of(config),
    **{k: v for k, v in config.multimodal.items() if k != "variant"},
  }
  return flava.Flava(
    image=image,
    text=txt,
    multimodal=mm,
    embed_dim=config.embed_dim,
    mim_codes=config.get("mim_codes", 0),
    **logit_scale_fields(config),
    **shared_fields(config),
  )
