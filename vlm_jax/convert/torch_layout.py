"""Reading PyTorch-layout checkpoints and rewriting their tensors into vlm_jax's parameter shapes.

Torch `Linear` weights are [out, in]; vlm_jax kernels are [in, out], with attention kernels split into
[embed, heads, head_dim] / [heads, head_dim, embed]. Patchify convolutions become dense kernels over
(row, column, channel)-flattened patches, the order `VisionTransformer` flattens them in.
"""

import os

import numpy as np

from vlm_jax.errors import ConfigError

# Tensors that carry no weights (buffers and OpenAI's bookkeeping entries).
IGNORED = ("position_ids", "input_resolution", "context_length", "vocab_size", "attn_mask")


class StateDict(dict):
  """A state dict that remembers which tensors were read, so that a converter that leaves a tensor behind
  (a weight silently dropped) or asks for one that is absent fails loudly."""

  def __init__(self, *args, source: str = ""):
    super().__init__(*args)
    self.source, self.used = source, set()

  def __getitem__(self, key):
    self.used.add(key)
    return super().__getitem__(key)

  def __missing__(self, key):
    raise ConfigError(
      f"{self.source} has no tensor {key!r}; is it a checkpoint of the kind given to --from?"
    )

  def drop(self, prefix: str) -> list:
    """Marks every tensor under `prefix` as deliberately left out; returns their names (for the log)."""
    names = sorted(k for k in self if k.startswith(prefix))
    self.used.update(names)
    return names

  def check_all_used(self):
    unused = sorted(k for k in self if k not in self.used and k.split(".")[-1] not in IGNORED)
    if unused:
      raise ConfigError(
        f"{self.source}: {len(unused)} tensors have no place in the vlm_jax model: "
        f"{', '.join(unused)}"
      )


def read_state_dict(path: str) -> StateDict:
  """{name: float32 np.ndarray} from .safetensors, or a torch .pt/.bin (plain, {'state_dict': ...}, or an
  OpenAI TorchScript archive). A 'module.' prefix (DistributedDataParallel) is dropped."""
  if not os.path.exists(path):
    raise ConfigError(f"checkpoint {path!r} not found")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

    tensors = load_file(path)
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(
        f"reading {path!r} needs PyTorch (pip install torch); .safetensors files do not"
      ) from None
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError:  # OpenAI's released .pt files are TorchScript archives
      obj = torch.jit.load(path, map_location="cpu").state_dict()
    if isinstance(obj, dict) and "state_dict" in obj:
      obj = obj["state_dict"]
    tensors = {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  out = StateDict(source=path)
  for name, value in tensors.items():
    out[name[len("module.") :] if name.startswith("module.") else name] = np.asarray(
      value, np.float32
    )
  return out


def dense(weight, bias=None) -> dict:
  p = {"kernel": weight.T}
  if bias is not None:
    p["bias"] = bias
  return p


def layer_norm(weight, bias) -> dict:
  return {"scale": weight, "bias": bias}


def heads_in(weight, bias, num_heads: int) -> dict:
  """Torch [heads*head_dim, embed] projection -> HeadProjection {kernel [embed, heads, head_dim], bias}."""
  out_dim, in_dim = weight.shape
  return {
    "kernel": weight.T.reshape(in_dim, num_heads, out_dim // num_heads),
    "bias": bias.reshape(num_heads, out_dim // num_heads),
  }


def heads_out(weight, bias, num_heads: int) -> dict:
  """Torch [embed, heads*head_dim] output projection -> HeadMerge {kernel [heads, head_dim, embed], bias}."""
  out_dim, in_dim = weight.shape
  return {"kernel": weight.T.reshape(num_heads, in_dim // num_heads, out_dim), "bias": bias}


def attention(q, k, v, out, num_heads: int) -> dict:
  """q/k/v/out: (weight, bias) pairs in torch layout."""
  return {
    "query": heads_in(*q, num_heads),
    "key": heads_in(*k, num_heads),
    "value": heads_in(*v, num_heads),
    "out": heads_out(*out, num_heads),
  }


def fused_attention(in_weight, in_bias, out_weight, out_bias, num_heads: int) -> dict:
  """torch.nn.MultiheadAttention's fused in_proj ([3*embed, embed]) -> separate query/key/value."""
  qw, kw, vw = np.split(in_weight, 3)
  qb, kb, vb = np.split(in_bias, 3)
  return attention((qw, qb), (kw, kb), (vw, vb), (out_weight, out_bias), num_heads)


def patch_kernel(conv_weight) -> np.ndarray:
  """Conv weight [width, channels, p, p] -> dense kernel [(p * p * channels), width]."""
  width = conv_weight.shape[0]
  return conv_weight.transpose(2, 3, 1, 0).reshape(-1, width)


def pad_rows(embedding, rows: int) -> np.ndarray:
  """Embedding [vocab, width] padded with zero rows to the model's padded vocabulary size."""
  return np.concatenate(
    [embedding, np.zeros((rows - embedding.shape[0], embedding.shape[1]), embedding.dtype)]
  )


def count_layers(state: dict, prefix: str) -> int:
  """Number of blocks named prefix{i}. in a state dict."""
  indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
  if not indices:
    raise ConfigError(f"no parameters named {prefix}N.* in the checkpoint; is it the right --from?")
  return max(indices) + 1
