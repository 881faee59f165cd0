"""big_vision's SigLIP (and SigLIP 2) checkpoints: the `.npz` files of `two_towers` models, local or gs://.

Keys are the flattened Flax parameters, `params/img/...` (a ViT with a MAP head), `params/txt/...` (the text
transformer and its `head`), `params/t` and `params/b`. They are renamed and re-laid out exactly as
transformers' own conversion does it (`src/transformers/models/siglip/convert_siglip_to_hf.py`,
huggingface/transformers: `create_rename_keys`, `rename_key`, `read_in_q_k_v_head`), which gives an
HF-layout SigLIP state dict and config; the HF SigLIP import (`hf.siglip_from_state`) takes it from there.
The sizes are read from the arrays' shapes.
"""

import io
import re

import numpy as np

from vlm_jax import storage
from vlm_jax.convert import hf
from vlm_jax.convert import torch_layout as tl
from vlm_jax.errors import ConfigError

# big_vision name (after `params/`) -> HF name, for one encoder block; {i} is the block.
_BLOCK = {
  "LayerNorm_0/scale": "layer_norm1.weight",
  "LayerNorm_0/bias": "layer_norm1.bias",
  "LayerNorm_1/scale": "layer_norm2.weight",
  "LayerNorm_1/bias": "layer_norm2.bias",
  "MlpBlock_0/Dense_0/kernel": "mlp.fc1.weight",
  "MlpBlock_0/Dense_0/bias": "mlp.fc1.bias",
  "MlpBlock_0/Dense_1/kernel": "mlp.fc2.weight",
  "MlpBlock_0/Dense_1/bias": "mlp.fc2.bias",
  **{
    f"MultiHeadDotProductAttention_0/{bv}/{kind}": f"self_attn.{hf_name}_proj.{suffix}"
    for bv, hf_name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out"))
    for kind, suffix in (("kernel", "weight"), ("bias", "bias"))
  },
}
_SINGLE = {
  "img/embedding/kernel": "vision_model.embeddings.patch_embedding.weight",
  "img/embedding/bias": "vision_model.embeddings.patch_embedding.bias",
  "img/pos_embedding": "vision_model.embeddings.position_embedding.weight",
  "img/Transformer/encoder_norm/scale": "vision_model.post_layernorm.weight",
  "img/Transformer/encoder_norm/bias": "vision_model.post_layernorm.bias",
  "img/MAPHead_0/probe": "vision_model.head.probe",
  "img/MAPHead_0/LayerNorm_0/scale": "vision_model.head.layernorm.weight",
  "img/MAPHead_0/LayerNorm_0/bias": "vision_model.head.layernorm.bias",
  "img/MAPHead_0/MlpBlock_0/Dense_0/kernel": "vision_model.head.mlp.fc1.weight",
  "img/MAPHead_0/MlpBlock_0/Dense_0/bias": "vision_model.head.mlp.fc1.bias",
  "img/MAPHead_0/MlpBlock_0/Dense_1/kernel": "vision_model.head.mlp.fc2.weight",
  "img/MAPHead_0/MlpBlock_0/Dense_1/bias": "vision_model.head.mlp.fc2.bias",
  "img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel": (
    "vision_model.head.attention.out_proj.weight"
  ),
  "img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias": "vision_model.head.attention.out_proj.bias",
  "txt/Embed_0/embedding": "text_model.embeddings.token_embedding.weight",
  "txt/pos_embedding": "text_model.embeddings.position_embedding.weight",
  "txt/Encoder_0/encoder_norm/scale": "text_model.final_layer_norm.weight",
  "txt/Encoder_0/encoder_norm/bias": "text_model.final_layer_norm.bias",
  "txt/head/kernel": "text_model.head.weight",
  "txt/head/bias": "text_model.head.bias",
  "t": "logit_scale",
  "b": "logit_bias",
}
_STACKS = {
  "img/Transformer/": "vision_model.encoder.layers.",
  "txt/Encoder_0/": "text_model.encoder.layers.",
}


def hf_name(name: str) -> str | None:
  """The HF SigLIP name of big_vision parameter `name` (without `params/`); None for the MAP head's
  query / key / value, which HF fuses (`read_in_q_k_v_head`)."""
  if name in _SINGLE:
    return _SINGLE[name]
  for stack, prefix in _STACKS.items():
    match = re.fullmatch(re.escape(stack) + r"encoderblock_(\d+)/(.+)", name)
    if match and match.group(2) in _BLOCK:
      return f"{prefix}{match.group(1)}.{_BLOCK[match.group(2)]}"
  if re.fullmatch(
    r"img/MAPHead_0/MultiHeadDotProductAttention_0/(query|key|value)/(kernel|bias)", name
  ):
    return None
  raise ConfigError(
    f"big_vision parameter {name!r} has no place in a SigLIP two-tower model; is this a SigLIP .npz?"
  )


def _layout(value, new: str, width: int):
  """transformers' `rename_key`: attention kernels to [out, in], the patch kernel to a convolution's
  [out, in, h, w], dense kernels transposed, position tables to [positions, width], biases flat."""
  if any(p in new for p in ("out_proj", "v_proj", "k_proj", "q_proj")):
    value = value.reshape(-1, width)
  if "patch_embedding.weight" in new:
    value = value.transpose(3, 2, 0, 1)
  elif new.endswith("weight") and "position_embedding" not in new and "token_embedding" not in new:
    value = value.T
  if "position_embedding" in new:
    value = value.reshape(-1, width)
  if new.endswith("bias") and new != "logit_bias":
    value = value.reshape(-1)
  return value


def read_npz(path: str) -> dict:
  """{name without `params/`: float32 array} of a big_vision `.npz` (a local path or gs://)."""
  if not storage.exists(path):
    raise ConfigError(f"big_vision checkpoint {path!r} not found")
  with np.load(io.BytesIO(storage.read_bytes(path))) as npz:
    return {k.removeprefix("params/"): np.asarray(npz[k], np.float32) for k in npz.files}


def _depth(arrays, stack: str) -> int:
  pattern = re.compile(re.escape(stack) + r"encoderblock_(\d+)/")
  return len({m.group(1) for m in map(pattern.match, arrays) if m})


def to_hf(arrays: dict, source: str):
  """(HF SiglipConfig dict, HF-named state) of big_vision SigLIP arrays."""
  d_img = arrays["img/embedding/kernel"].shape[-1]
  d_txt = arrays["txt/Embed_0/embedding"].shape[-1]
  patch = arrays["img/embedding/kernel"].shape[0]
  block = "encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"
  vision = dict(
    hidden_size=d_img,
    num_hidden_layers=_depth(arrays, "img/Transformer/"),
    num_attention_heads=arrays[f"img/Transformer/{block}"].shape[1],
    intermediate_size=arrays["img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1],
    patch_size=patch,
    image_size=int(round(np.sqrt(arrays["img/pos_embedding"].reshape(-1, d_img).shape[0]))) * patch,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
  )
  text = dict(
    vocab_size=arrays["txt/Embed_0/embedding"].shape[0],
    hidden_size=d_txt,
    num_hidden_layers=_depth(arrays, "txt/Encoder_0/"),
    num_attention_heads=arrays[f"txt/Encoder_0/{block}"].shape[1],
    intermediate_size=arrays["txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel"].shape[1],
    max_position_embeddings=arrays["txt/pos_embedding"].reshape(-1, d_txt).shape[0],
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
  )
  state = tl.StateDict(source=source)
  for name, value in arrays.items():
    new = hf_name(name)
    if new is not None:
      state[new] = _layout(value, new, d_img if new.startswith("vision") else d_txt)
  # read_in_q_k_v_head: the MAP head's query, key and value as one [3 * width, width] projection.
  head = "img/MAPHead_0/MultiHeadDotProductAttention_0/"
  state["vision_model.head.attention.in_proj_weight"] = np.concatenate(
    [arrays[f"{head}{p}/kernel"].reshape(-1, d_img).T for p in ("query", "key", "value")]
  )
  state["vision_model.head.attention.in_proj_bias"] = np.concatenate(
    [arrays[f"{head}{p}/bias"].reshape(-1) for p in ("query", "key", "value")]
  )
  return {"model_type": "siglip", "vision_config": vision, "text_config": text}, state


def convert_siglip(path: str):
  """-> (model config dict, params, objective name, tokenizer (name, file names)), as `hf.convert_siglip`."""
  config, state = to_hf(read_npz(path), path)
  return hf.siglip_from_state(config, state)
