"""The optimizer a config names, with each reference's conventions as named choices.

- `optim.name`: `adamw` (Adam's moments, as PyTorch's and optax's AdamW) or `adafactor` (big_vision's
  `scale_by_adafactor`: a factored second moment whose decay 1 - (t+1)^-0.8 is capped at `b2`, and momentum
  `b1` without bias correction, kept in `mu_dtype`).
- `optim.weight_decay_mode`: `lr_coupled` decays `lr(t) * wd * p` per step (PyTorch AdamW, optax.adamw,
  open_clip, ViLT, FLAVA); `decoupled` decays `wd * schedule(t) / lr * p`, the schedule with peak 1 and not
  multiplied by the learning rate (big_vision/optax.py `make`: scale(lr), add_decayed_weights(wd),
  scale_by_schedule).
- `optim.decay_mask`: which parameters decay. `open_clip` is open_clip_train/main.py's rule (no 1-d
  parameters, nothing whose path contains "bn", "ln", "bias" or "logit_scale"); `big_vision` is
  `.*/kernel` (its `wd_mults` default); `transformers` every parameter but biases and LayerNorms (the
  `no_decay` lists of BERT-era code: ViLT, the HF Trainer); `all` every parameter; anything else is a
  regex that a parameter's path must fully match.
- `optim.warmup_from`: `zero` starts the linear warmup at 0 on step 0 (optax, big_vision, transformers'
  schedules); `one_step` gives step t the rate `lr * (t + 1) / warmup` (open_clip_train/scheduler.py).
- `optim.grad_clip_norm` clips the global norm of the trainable parameters' gradients (0: off).

Parameter paths are '/'-joined keys, e.g. 'image_encoder/encoder/block_0/attn/query/kernel'. A group
matching `optim.frozen` gets no update and no optimizer state; groups in `optim.lr_multipliers`
((regex, multiplier) pairs, first match wins) get a scaled learning rate (not a scaled decay, as
big_vision's `lr_mults`, when the decay is decoupled). Regexes match whole paths.
"""

import re

import jax
import jax.numpy as jnp
import optax

from vlm_jax.errors import ConfigError

NAMES = ("adamw", "adafactor")
WEIGHT_DECAY_MODES = ("lr_coupled", "decoupled")
WARMUP_FROM = ("zero", "one_step")
# And "open_clip", a rule over paths and shapes. In vlm_jax's paths "ln" only ever names a LayerNorm.
DECAY_MASKS = {"big_vision": ".*/kernel", "transformers": "(?!.*(bias|ln)).*", "all": ".*"}
OPEN_CLIP_NO_DECAY = ("bn", "ln", "bias", "logit_scale")  # open_clip_train/main.py's `exclude`


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_paths(tree):
  """The same tree with each leaf replaced by its '/'-joined path."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def _choice(config, key: str, default: str, known) -> str:
  value = config.get(key, default)
  if value not in known:
    raise ConfigError(f"unknown optim.{key} {value!r}; known: {', '.join(known)}")
  return value


def check_config(config):
  """The optimizer's named choices, checked before anything is built."""
  _choice(config, "name", "adamw", NAMES)
  _choice(config, "weight_decay_mode", "lr_coupled", WEIGHT_DECAY_MODES)
  _choice(config, "warmup_from", "zero", WARMUP_FROM)
  _choice(config, "schedule", "cosine", ("cosine", "linear", "constant"))
  rule = config.get("decay_mask", "open_clip")
  if rule != "open_clip":
    try:
      re.compile(DECAY_MASKS.get(rule, rule))
    except re.error as e:
      raise ConfigError(
        f"optim.decay_mask {rule!r} is not a regex ({e}); give open_clip, big_vision, all or a "
        "regex over parameter paths"
      ) from None


def make_schedule(config, total_steps: int, warmup_steps: int):
  """Linear warmup to `lr` (from 0 or from lr / warmup, `warmup_from`), then cosine / linear decay to
  `lr * end_lr_factor`, or constant."""
  lr, end = config.lr, config.lr * config.get("end_lr_factor", 0.0)
  decay_steps = max(total_steps - warmup_steps, 1)
  kind = _choice(config, "schedule", "cosine", ("cosine", "linear", "constant"))
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
  elif kind == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warmup_steps <= 0:
    return decay
  if _choice(config, "warmup_from", "zero", WARMUP_FROM) == "zero":
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  else:
    warmup = lambda step: lr * (step + 1) / warmup_steps  # open_clip's _warmup_lr
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(rule: str, params):
  """A tree of bools: which parameters `optim.decay_mask` decays. `params` may be abstract."""
  if rule == "open_clip":
    return jax.tree_util.tree_map_with_path(
      lambda p, x: len(x.shape) >= 2 and not any(s in path_str(p) for s in OPEN_CLIP_NO_DECAY),
      params,
    )
  regex = re.compile(DECAY_MASKS.get(rule, rule))
  mask = jax.tree.map(lambda p: bool(regex.fullmatch(p)), param_paths(params))
  if not any(jax.tree.leaves(mask)):
    paths = jax.tree.leaves(param_paths(params))
    raise ConfigError(
      f"optim.decay_mask {rule!r} matches no parameter path (paths look like {paths[0]!r})"
    )
  return mask


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


def scale_by_big_vision_adafactor(config):
  """big_vision/optax.py `scale_by_adafactor` with its defaults, b2 as its `beta2_cap` and b1 its momentum."""
  options = dict(config.get("adafactor", {}) or {})
  cap = config.b2

  def decay_rate(step, exponent):
    t = jnp.asarray(step, jnp.float32) + 1.0
    return jnp.minimum(cap, 1.0 - t ** (-exponent))

  second_moment = optax.scale_by_factored_rms(
    factored=True,
    decay_rate=options.get("decay_rate", 0.8),
    step_offset=0,
    min_dim_size_to_factor=options.get("min_dim_size_to_factor", 32),
    epsilon=config.eps,
    decay_rate_fn=decay_rate,
  )
  if not config.b1:
    return second_moment
  momentum = optax.ema(config.b1, debias=False, accumulator_dtype=_mu_dtype(config))
  return optax.chain(second_moment, momentum)


def _mu_dtype(config):
  name = config.get("mu_dtype", "float32")
  try:
    return jnp.dtype(name)
  except TypeError:
    raise ConfigError(f"optim.mu_dtype {name!r} is not a dtype; e.g. float32, bfloat16") from None


def preconditioner(config):
  if _choice(config, "name", "adamw", NAMES) == "adafactor":
    return scale_by_big_vision_adafactor(config)
  return optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps, mu_dtype=_mu_dtype(config))


def _update(config, schedule, multiplier: float, mask):
  """One parameter group's update: the preconditioned gradient, the weight decay and the learning rate,
  in the order and with the coupling `optim.weight_decay_mode` names."""
  wd = config.get("weight_decay", 0.0)
  decay = [optax.add_decayed_weights(wd, mask)] if wd else []
  if _choice(config, "weight_decay_mode", "lr_coupled", WEIGHT_DECAY_MODES) == "lr_coupled":
    # optax.adamw's own chain: -lr(t) * (adam + wd * p).
    lr = schedule if multiplier == 1.0 else (lambda step: multiplier * schedule(step))
    return optax.chain(preconditioner(config), *decay, optax.scale_by_learning_rate(lr))
  # big_vision: -schedule(t) / peak * (peak * multiplier * adam + wd * p).
  peak = config.lr
  unit = (lambda step: schedule(step) / peak) if peak else (lambda step: 0.0 * schedule(step))
  return optax.chain(
    preconditioner(config),
    optax.scale(peak * multiplier),
    *decay,
    optax.scale_by_schedule(unit),
    optax.scale(-1.0),
  )


def make_optimizer(config, params, total_steps: int, warmup_steps: int, extra_frozen: str = ""):
  """Returns (optax transformation, base learning-rate schedule). `params` may be abstract."""
  check_config(config)
  schedule = make_schedule(config, total_steps, warmup_steps)
  mask = (
    decay_mask(config.get("decay_mask", "open_clip"), params)
    if config.get("weight_decay", 0.0)
    else None
  )
  transforms = {"default": _update(config, schedule, 1.0, mask), "frozen": optax.set_to_zero()}
  for i, (_, multiplier) in enumerate(tuple(config.get("lr_multipliers", ()) or ())):
    transforms[f"lr_mult_{i}"] = _update(config, schedule, float(multiplier), mask)
  labels = group_labels(config, params, extra_frozen)
  used = set(jax.tree.leaves(labels))
  tx = optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)
  if config.get("grad_clip_norm"):
    # Over the trainable parameters' gradients only, as big_vision (masked to the unfrozen) and PyTorch
    # (frozen parameters have no gradient) compute the norm.
    trainable = jax.tree.map(lambda label: label != "frozen", labels)
    tx = optax.chain(optax.masked(optax.clip_by_global_norm(config.grad_clip_norm), trainable), tx)
  return tx, schedule
