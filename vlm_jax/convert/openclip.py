"""OpenAI CLIP / open_clip state dicts (`visual.*`, `transformer.resblocks.*`, `text_projection`, ...) and
open_clip CoCa state dicts (`visual.attn_pool.*`, `text.*`, `text_decoder.*`) -> vlm_jax.

The state dict fixes every size except the number of heads (OpenAI's convention: width / 64) and the
activation (OpenAI's weights use QuickGELU; open_clip models trained without the `-quickgelu` suffix, its
CoCa models among them, use GELU), which are options.
"""

import math

import numpy as np

from vlm_jax.convert import torch_layout as tl
from vlm_jax.errors import ConfigError
from vlm_jax.models import text as text_lib


def _blocks(state, prefix, depth, heads):
  return {
    f"block_{i}": _block(lambda name: state[f"{prefix}{i}.{name}"], heads)  # noqa: B023
    for i in range(depth)
  }


def _block(g, heads, cross=False):
  """One open_clip `ResidualAttentionBlock` (g(name) reads its tensors) -> a vlm_jax Block/CrossBlock."""
  out = {
    "ln_1": tl.layer_norm(g("ln_1.weight"), g("ln_1.bias")),
    "attn": tl.fused_attention(
      g("attn.in_proj_weight"),
      g("attn.in_proj_bias"),
      g("attn.out_proj.weight"),
      g("attn.out_proj.bias"),
      heads,
    ),
    "ln_2": tl.layer_norm(g("ln_2.weight"), g("ln_2.bias")),
    "mlp": {
      "fc1": tl.dense(g("mlp.c_fc.weight"), g("mlp.c_fc.bias")),
      "fc2": tl.dense(g("mlp.c_proj.weight"), g("mlp.c_proj.bias")),
    },
  }
  if cross:
    out["ln_1_kv"] = tl.layer_norm(g("ln_1_kv.weight"), g("ln_1_kv.bias"))
  return out


def _pooler(state, prefix, heads):
  """open_clip's `AttentionalPooler`: its MultiheadAttention keeps q/k/v apart when the keys are wider
  than the queries (kdim != embed_dim), fused otherwise."""
  g = lambda name: state[prefix + name]
  if prefix + "attn.in_proj_weight" in state:
    attn = tl.fused_attention(
      g("attn.in_proj_weight"),
      g("attn.in_proj_bias"),
      g("attn.out_proj.weight"),
      g("attn.out_proj.bias"),
      heads,
    )
  else:
    qb, kb, vb = np.split(g("attn.in_proj_bias"), 3)
    attn = tl.attention(
      (g("attn.q_proj_weight"), qb),
      (g("attn.k_proj_weight"), kb),
      (g("attn.v_proj_weight"), vb),
      (g("attn.out_proj.weight"), g("attn.out_proj.bias")),
      heads,
    )
  return {
    "probe": g("query"),
    "ln_q": tl.layer_norm(g("ln_q.weight"), g("ln_q.bias")),
    "ln_k": tl.layer_norm(g("ln_k.weight"), g("ln_k.bias")),
    "attn": attn,
  }


def _vision(state, act, heads, pool):
  """(model fields, parameters) of open_clip's `VisionTransformer` up to its pooling."""
  conv = state["visual.conv1.weight"]
  width, patch = conv.shape[0], conv.shape[-1]
  grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
  depth = tl.count_layers(state, "visual.transformer.resblocks.")
  heads = heads or width // 64
  fields = dict(
    variant=f"B/{patch}",
    width=width,
    depth=depth,
    num_heads=heads,
    mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    patch_size=patch,
    image_size=patch * grid,
    act=act,
    pool=pool,
  )
  params = {
    "patch_embed": {"kernel": tl.patch_kernel(conv)},
    "cls_token": state["visual.class_embedding"],
    "pos_embed": state["visual.positional_embedding"],
    "ln_pre": tl.layer_norm(state["visual.ln_pre.weight"], state["visual.ln_pre.bias"]),
    "encoder": _blocks(state, "visual.transformer.resblocks.", depth, heads),
  }
  return fields, params


def _text_tower(state, prefix, act, text_heads):
  """The text tower's config fields, read from the state dict's shapes (`prefix`: "text." in CoCa)."""
  vocab, width = state[f"{prefix}token_embedding.weight"].shape
  return dict(
    variant="B",
    vocab_size=vocab,
    width=width,
    depth=tl.count_layers(state, f"{prefix}transformer.resblocks."),
    num_heads=text_heads or width // 64,
    mlp_dim=state[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    max_len=state[f"{prefix}positional_embedding"].shape[0],
    act=act,
    causal=True,
  )


def convert_coca(state, *, act="gelu", image_heads=0, text_heads=0, pool_heads=0, decoder_heads=0):
  """open_clip's `CoCa` (coca_model.py) -> vlm_jax's CoCa (models/coca.py), the same function."""
  image, image_params = _vision(state, act, image_heads, "cls")
  text = _text_tower(state, "text.", act, text_heads)
  vocab, text_width, text_depth, text_heads = (
    text[k] for k in ("vocab_size", "width", "depth", "num_heads")
  )
  embed_dim = state["visual.proj"].shape[1]
  text.update(
    max_len=text["max_len"] - 1,  # one more row: the class embedding
    pad_id=0,  # open_clip's CoCa masks id 0 for its class embedding
  )
  padded = text_lib.pad_vocab(vocab)
  decoder_depth = tl.count_layers(state, "text_decoder.resblocks.")
  decoder_heads = decoder_heads or text_width // 64
  decoder = {}
  for i in range(decoder_depth):
    own = lambda name: state[f"text_decoder.resblocks.{i}.{name}"]  # noqa: B023
    cross = lambda name: state[f"text_decoder.cross_attn.{i}.{name}"]  # noqa: B023
    decoder[f"block_{i}"] = {
      "self": _block(own, decoder_heads),
      "cross": _block(cross, decoder_heads, cross=True),
    }
  head = state["text_decoder.text_projection"]
  params = {
    "image_encoder": image_params,
    "image_pool": _pooler(state, "visual.attn_pool.", pool_heads or embed_dim // 64),
    "image_ln_post": tl.layer_norm(state["visual.ln_post.weight"], state["visual.ln_post.bias"]),
    "image_proj": {"kernel": state["visual.proj"]},
    "text_encoder": {
      "token_embed": {"embedding": tl.pad_rows(state["text.token_embedding.weight"], padded)},
      "pos_embed": state["text.positional_embedding"],
      "cls_embed": state["text.cls_emb"],
      "encoder": _blocks(state, "text.transformer.resblocks.", text_depth, text_heads),
      "ln_final": tl.layer_norm(state["text.ln_final.weight"], state["text.ln_final.bias"]),
    },
    "text_proj": {"kernel": state["text.text_projection"]},
    "multimodal_decoder": decoder,
    "decoder_ln": tl.layer_norm(
      state["text_decoder.ln_final.weight"], state["text_decoder.ln_final.bias"]
    ),
    "lm_head": {"kernel": tl.pad_rows(head.T, padded).T},
    "logit_scale": np.float32(state["logit_scale"].reshape(())),
  }
  model = dict(
    name="coca",
    embed_dim=embed_dim,
    caption_queries=state["visual.attn_pool.query"].shape[0],
    pool_heads=pool_heads or embed_dim // 64,
    image=image,
    text=text,
    decoder=dict(
      depth=decoder_depth,
      num_heads=decoder_heads,
      mlp_dim=state["text_decoder.resblocks.0.mlp.c_fc.weight"].shape[0],
    ),
  )
  state.check_all_used()
  return model, params, "coca", ("clip_bpe", ("bpe_simple_vocab_16e6.txt.gz",))


def convert(
  path: str,
  *,
  act: str = "quick_gelu",
  image_heads: int = 0,
  text_heads: int = 0,
  pool_heads: int = 0,
  decoder_heads: int = 0,
):
  state = tl.read_state_dict(path)
  if "text_decoder.ln_final.weight" in state:
    return convert_coca(
      state,
      act=act,
      image_heads=image_heads,
      text_heads=text_heads,
      pool_heads=pool_heads,
      decoder_heads=decoder_heads,
    )
  if "visual.conv1.weight" not in state:
    if any(k.startswith("visual.trunk") for k in state):
      raise ConfigError(
        "this open_clip model uses a timm image tower, which vlm_jax does not import"
      )
    raise ConfigError(
      f"{path!r} is not an OpenAI/open_clip CLIP state dict (no visual.conv1.weight)"
    )
  image, image_params = _vision(state, act, image_heads, "cls")
  image_params["ln_post"] = tl.layer_norm(
    state["visual.ln_post.weight"], state["visual.ln_post.bias"]
  )
  text = _text_tower(state, "", act, text_heads)
  vocab, text_depth, text_heads = (text[k] for k in ("vocab_size", "depth", "num_heads"))
  # OpenAI pools at the argmax of the token ids: the end-of-text token, the last id of the vocabulary.
  text.update(pool="eot", pad_id=-1, eos_id=vocab - 1)
  text_params = {
    "token_embed": {
      "embedding": tl.pad_rows(state["token_embedding.weight"], text_lib.pad_vocab(vocab))
    },
    "pos_embed": state["positional_embedding"],
    "encoder": _blocks(state, "transformer.resblocks.", text_depth, text_heads),
    "ln_final": tl.layer_norm(state["ln_final.weight"], state["ln_final.bias"]),
  }
  params = {
    "image_encoder": image_params,
    "text_encoder": text_params,
    "image_proj": {"kernel": state["visual.proj"]},
    "text_proj": {"kernel": state["text_projection"]},
    "logit_scale": np.float32(state["logit_scale"].reshape(())),
  }
  model = dict(name="clip", embed_dim=state["text_projection"].shape[1], image=image, text=text)
  state.check_all_used()
  return model, params, "clip", ("clip_bpe", ("bpe_simple_vocab_16e6.txt.gz",))
