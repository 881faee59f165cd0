"""AdamW with warmup + decay schedules, weight decay masked to matrices, and parameter groups by regex.

Parameter paths are '/'-joined keys, e.g. 'image_encoder/encoder/block_0/attn/query/kernel'. A group
matching `optim.frozen` gets no update and no optimizer state; groups in `optim.lr_multipliers`
((regex, multiplier) pairs, first match wins) get a scaled learning rate. Regexes match whole paths.
"""

import re

import jax
import optax

from vlm_jax.errors import ConfigError


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_paths(tree):
  """The same tree with each leaf replaced by its '/'-joined path."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def make_schedule(config, total_steps: int, warmup_steps: int):
  """Linear warmup from 0 to `lr`, then cosine / linear decay to `lr * end_lr_factor`, or constant."""
  lr, end = config.lr, config.lr * config.get("end_lr_factor", 0.0)
  decay_steps = max(total_steps - warmup_steps, 1)
  kind = config.get("schedule", "cosine")
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ConfigError(f"unknown optim.schedule {kind!r}; known: cosine, linear, constant")
  if warmup_steps <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def group_labels(config, params, extra_frozen: str = ""):
  """Each parameter's group: 'frozen', 'lr_mult_<i>' or 'default'. Unused regexes are config errors.

  `config.frozen` freezes the paths it matches; `config.trainable` (if set) freezes every path it does not
  match (a stage of a staged recipe). extra_frozen: a regex frozen on top (the locked towers of the model).
  """
  frozen = "|".join(r for r in (config.get("frozen", ""), extra_frozen) if r) or None
  trainable = config.get("trainable", "") or None
  multipliers = tuple(config.get("lr_multipliers", ()) or ())
  paths = jax.tree.leaves(param_paths(params))
  for regex in [r for r in (frozen, trainable) if r] + [r for r, _ in multipliers]:
    if not any(re.fullmatch(regex, p) for p in paths):
      raise ConfigError(
        f"parameter regex {regex!r} matches no parameter path (paths look like {paths[0]!r})"
      )

  def label(path):
    if (frozen and re.fullmatch(frozen, path)) or (trainable and not re.fullmatch(trainable, path)):
      return "frozen"
    for i, (regex, _) in enumerate(multipliers):
      if re.fullmatch(regex, path):
        return f"lr_mult_{i}"
    return "default"

  return jax.tree.map(label, param_paths(params))


def make_optimizer(config, params, total_steps: int, warmup_steps: int, extra_frozen: str = ""):
  """Returns (optax transformation, base learning-rate schedule). `params` may be abstract."""
  schedule = make_schedule(config, total_steps, warmup_steps)
  # Decay matrices only (kernels, embeddings); biases, norms, class tokens and the logit scale are vectors
  # or scalars.
  decay_mask = jax.tree.map(lambda p: len(p.shape) >= 2, params)

  def adamw(multiplier=1.0):
    lr = schedule if multiplier == 1.0 else (lambda step: multiplier * schedule(step))
    return optax.adamw(
      lr,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
      mask=decay_mask,
    )

  transforms = {"default": adamw(), "frozen": optax.set_to_zero()}
  for i, (_, multiplier) in enumerate(tuple(config.get("lr_multipliers", ()) or ())):
    transforms[f"lr_mult_{i}"] = adamw(float(multiplier))
  labels = group_labels(config, params, extra_frozen)
  used = set(jax.tree.leaves(labels))
  tx = optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)
  if config.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, schedule
