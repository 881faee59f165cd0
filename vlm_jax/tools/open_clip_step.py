"""open_clip's train step for the CLIP a vlm_jax config describes: the PyTorch reference that
`python -m vlm_jax.tools.bench --against open_clip` times in turns with vlm_jax's step on the same machine.

The model is open_clip's own `CLIP` (its model.py, transformer.py and loss.py), built with the config's
sizes, activation, pooling and optimizer. open_clip's package `__init__` imports torchvision, which has no
CPU wheel next to a CPU torch here; only `FrozenBatchNorm2d` (ResNet towers) is needed from it, so the
modules are loaded without the package `__init__` and that one name is stubbed when torchvision is absent.
Needs `pip install torch` and `pip install --no-deps open_clip_torch==3.3.0`.
"""

import importlib.machinery
import importlib.util
import sys
import types

import numpy as np

from vlm_jax.data import transforms
from vlm_jax.errors import ConfigError


def _load_open_clip():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("--against open_clip needs PyTorch: pip install torch") from None
  if "open_clip" not in sys.modules:  # (a second call finds the package module made below)
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
      raise ConfigError(
        "--against open_clip needs open_clip: pip install --no-deps open_clip_torch==3.3.0"
      )
    package = types.ModuleType("open_clip")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["open_clip"] = package
  if importlib.util.find_spec("torchvision") is None:
    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
      module = types.ModuleType(name)
      module.__spec__ = importlib.machinery.ModuleSpec(name, None)
      sys.modules.setdefault(name, module)
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = type(
      "FrozenBatchNorm2d", (torch.nn.Module,), {}
    )
  from open_clip import loss, model  # pylint: disable=import-outside-toplevel

  return torch, model, loss


def build_step(exp, batch: dict):
  """A zero-argument callable running one open_clip train step (forward, InfoNCE, backward, AdamW) on
  `batch` (numpy arrays of `exp`'s shapes), with a model of `exp.config`'s sizes."""
  torch, model_lib, loss_lib = _load_open_clip()
  config, towers = exp.config, exp.model
  if config.model.name != "clip":
    raise ConfigError(f"--against open_clip compares CLIP recipes, not {config.model.name!r}")
  image, text = towers.image, towers.text
  acts = {image.get("act", "gelu"), text.get("act", "gelu")}
  if len(acts) != 1 or acts - {"gelu", "quick_gelu"}:
    raise ConfigError(f"open_clip's towers share one activation, gelu or quick_gelu; got {acts}")
  clip = model_lib.CLIP(
    embed_dim=config.model.embed_dim,
    vision_cfg=model_lib.CLIPVisionCfg(
      layers=image["depth"],
      width=image["width"],
      head_width=image["width"] // image["num_heads"],
      mlp_ratio=image["mlp_dim"] / image["width"],
      patch_size=image["patch_size"],
      image_size=image["image_size"],
    ),
    text_cfg=model_lib.CLIPTextCfg(
      context_length=text["max_len"],
      vocab_size=text["vocab_size"],
      width=text["width"],
      heads=text["num_heads"],
      layers=text["depth"],
      mlp_ratio=text["mlp_dim"] / text["width"],
    ),
    quick_gelu=acts == {"quick_gelu"},
  )
  clip.train()
  optim = config.optim
  optimizer = torch.optim.AdamW(
    clip.parameters(),
    lr=optim.lr,
    betas=(optim.get("b1", 0.9), optim.get("b2", 0.98)),
    eps=optim.get("eps", 1e-6),
    weight_decay=optim.get("weight_decay", 0.0),
  )
  infonce = loss_lib.ClipLoss()
  pixels = transforms.normalise_on_host(batch["image"], *exp.pixel_stats)
  images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
  tokens = torch.from_numpy(np.array(batch["text"])).long()

  def forward():
    image_features, text_features, logit_scale = clip(images, tokens)
    return infonce(image_features, text_features, logit_scale)

  def forward_backward():
    optimizer.zero_grad(set_to_none=True)
    loss = forward()
    loss.backward()
    return loss

  def step():
    loss = forward_backward()
    optimizer.step()
    return loss.item()

  # The phases, timed separately by the bench (PyTorch runs eagerly: each is done when it returns).
  step.forward = lambda: forward().item()
  step.forward_backward = lambda: forward_backward().item()
  step.parameters = sum(p.numel() for p in clip.parameters())
  step.threads = torch.get_num_threads()
  return step
