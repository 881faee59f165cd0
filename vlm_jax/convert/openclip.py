"""OpenAI CLIP / open_clip state dicts (`visual.*`, `transformer.resblocks.*`, `text_projection`, ...) -> vlm_jax.

The state dict fixes every size except the number of heads (OpenAI's convention: width / 64) and the
activation (OpenAI's weights use QuickGELU; open_clip models trained without the `-quickgelu` suffix use
GELU), which are options.
"""

import math

import numpy as np

from vlm_jax.convert import torch_layout as tl
from vlm_jax.errors import ConfigError
from vlm_jax.models import text as text_lib


def _blocks(state, prefix, depth, heads):
  blocks = {}
  for i in range(depth):
    g = lambda name: state[f"{prefix}{i}.{name}"]  # noqa: B023  (called within this iteration)
    blocks[f"block_{i}"] = {
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
  return blocks


def convert(path: str, *, act: str = "quick_gelu", image_heads: int = 0, text_heads: int = 0):
  state = tl.read_state_dict(path)
  if "visual.conv1.weight" not in state:
    if any(k.startswith("visual.trunk") for k in state):
      raise ConfigError(
        "this open_clip model uses a timm image tower, which vlm_jax does not import"
      )
    raise ConfigError(
      f"{path!r} is not an OpenAI/open_clip CLIP state dict (no visual.conv1.weight)"
    )
  conv = state["visual.conv1.weight"]
  width, patch = conv.shape[0], conv.shape[-1]
  grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
  image_depth = tl.count_layers(state, "visual.transformer.resblocks.")
  image_heads = image_heads or width // 64
  image = dict(
    variant=f"B/{patch}",
    width=width,
    depth=image_depth,
    num_heads=image_heads,
    mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    patch_size=patch,
    image_size=patch * grid,
    act=act,
    pool="cls",
  )
  image_params = {
    "patch_embed": {"kernel": tl.patch_kernel(conv)},
    "cls_token": state["visual.class_embedding"],
    "pos_embed": state["visual.positional_embedding"],
    "ln_pre": tl.layer_norm(state["visual.ln_pre.weight"], state["visual.ln_pre.bias"]),
    "encoder": _blocks(state, "visual.transformer.resblocks.", image_depth, image_heads),
    "ln_post": tl.layer_norm(state["visual.ln_post.weight"], state["visual.ln_post.bias"]),
  }
  vocab, text_width = state["token_embedding.weight"].shape
  text_depth = tl.count_layers(state, "transformer.resblocks.")
  text_heads = text_heads or text_width // 64
  # OpenAI pools at the argmax of the token ids: the end-of-text token, the last id of the vocabulary.
  text = dict(
    variant="B",
    vocab_size=vocab,
    width=text_width,
    depth=text_depth,
    num_heads=text_heads,
    mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
    max_len=state["positional_embedding"].shape[0],
    act=act,
    causal=True,
    pool="eot",
    pad_id=-1,
    eos_id=vocab - 1,
  )
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
