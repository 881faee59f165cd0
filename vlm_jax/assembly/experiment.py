"""Everything a config names, built and checked once: mesh, data, tokenizer, model, objective, optimizer.

`check_config` fails fast (before devices are used for anything) on unknown names, bad durations, a mesh
that does not fit the devices, and batch sizes that do not divide; `Experiment` builds the parts that
the trainer, the evaluators and the benchmark share.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax import config_utils, durations, models, storage
from vlm_jax.core import checkpoint, host_memory, optim, sharding
from vlm_jax.core.state import TrainState
from vlm_jax.data import pipeline, tokenizers, transforms
from vlm_jax.errors import ConfigError
from vlm_jax.objectives import build_objective
from vlm_jax.registry import DATASETS, EVALUATORS, OBJECTIVES

# A PRNG key's shape and dtype: tracing init needs no concrete key, and a concrete one cannot be made on the
# devices of an AOT topology (`--topology`), which hold no data.
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def check_config(
  config,
  *,
  num_devices: int | None = None,
  process_count: int | None = None,
  weights: bool = True,
  platform: str | None = None,
):
  """Raises ConfigError (one line) for anything that would fail later. weights=False (compiling) skips the
  checks of where a locked tower's weights come from; platform: the devices' (default: this backend's)."""
  models.check_config(config.model, platform)
  DATASETS.get(config.data.name)
  tokenizers.check_tokenizer_name(config.data.tokenizer)
  if not config.objectives:
    raise ConfigError("config.objectives is empty; name at least one objective, e.g. clip")
  for key, cfg in config.objectives.items():
    OBJECTIVES.get(cfg.get("name", key))
  for key, cfg in config.evals.items():
    EVALUATORS.get(cfg.get("name", key))
    if cfg.get("data"):
      DATASETS.get(cfg.data.get("name", config.data.name))
    if cfg.every != durations.NEVER:
      durations.parse(cfg.every)
  config_utils.profile_steps(config.train.get("profile_steps", ()))
  optim.check_config(config.optim)
  augment = config.data.get("augment", {})
  transforms.crop_range(augment.get("crop_scale"))
  transforms.crop_range(augment.get("crop_ratio", (3 / 4, 4 / 3)), "data.augment.crop_ratio")
  for name in ("duration", "log_every", "checkpoint_every", "warmup"):
    durations.parse(config.train[name] if name != "warmup" else config.optim.warmup)
  locked = tuple(config.model.get("locked", ()))
  init_workdir = (config.get("init_from") or {}).get("workdir", "")
  if weights and locked and not init_workdir:
    raise ConfigError(
      f"model.locked={locked} but init_from.workdir is empty: a locked tower must come from a "
      "checkpoint; set --config.init_from.workdir to a vlm_jax run or converted model"
    )
  if init_workdir and not storage.isdir(storage.join(storage.resolve(init_workdir), "checkpoints")):
    raise ConfigError(
      f"init_from.workdir {init_workdir!r} has no checkpoints/ folder; give a vlm_jax run's workdir "
      "or the output of `python -m vlm_jax.convert`"
    )
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  mesh = config_utils.resolve_mesh(config.mesh, num_devices)
  config_utils.check_batch_size(config.batch_size, mesh, process_count)
  config_utils.check_batch_size(config.eval_batch_size, mesh, process_count, what="eval_batch_size")


def planned_steps(config, dataset_size: int | None = None) -> tuple:
  """(the schedule's length, the step this run stops at). train.max_steps cuts a run short (a smoke test) on
  the full run's schedule, so its steps are exactly the first steps of the full run, which can continue
  from it. dataset_size is needed only for durations in epochs."""
  total = durations.to_steps(
    config.train.duration, batch_size=config.batch_size, dataset_size=dataset_size
  )
  max_steps = config.train.get("max_steps", 0) or 0
  return total, (min(total, max_steps) if max_steps > 0 else total)


def build_tokenizer(config, data=None):
  """The run's tokenizer: `data.tokenizer` read from `data.tokenizer_path`, or the dataset's own
  SentencePiece model (the dataset, when `data` is not given, is built only for that). Training,
  evaluation and `vlm_jax.load` all tokenize through this."""
  path = config.data.get("tokenizer_path", "")
  dataset_path = None
  if config.data.tokenizer == "sentencepiece" and not path:
    data = data if data is not None else DATASETS.get(config.data.name)(config.data)
    dataset_path = data.tokenizer_path
  return tokenizers.get_tokenizer(config.data.tokenizer, path, dataset_path)


class Experiment:
  def __init__(self, config, *, devices=None, log=print, weights: bool = True):
    """devices: the mesh's devices (default: all of them); weights=False: for compiling only."""
    check_config(
      config,
      num_devices=None if devices is None else len(devices),
      weights=weights,
      platform=None if devices is None else devices[0].platform,
    )
    self.config = config
    self.log = log
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.data = DATASETS.get(config.data.name)(config.data)
    self.tokenizer = build_tokenizer(config, self.data)
    self._check_padding_is_not_a_token()
    self.platform = self.mesh.devices.flat[0].platform
    if self.platform == "cpu":
      host_memory.keep_freed_buffers()  # the step's buffers are host memory: no page faults per step
    self.model = models.build(config.model, self.tokenizer.vocab_size, self.platform)
    self.after_update = models.after_update(self.model)  # e.g. open_clip's logit-scale clamp
    # The data's normalisation, applied to the uint8 training images inside the step (`model_batch`).
    self.pixel_stats = (
      tuple(config.data.get("mean", transforms.CLIP_MEAN)),
      tuple(config.data.get("std", transforms.CLIP_STD)),
    )
    self.loss_fn = build_objective(
      config.objectives,
      mesh=self.mesh,
      tokenizer=self.tokenizer,
      max_len=config.model.text.max_len,
      patch_size=models.patch_size(config.model),
    )
    self.batch_size = config.batch_size
    to_steps = functools.partial(
      durations.to_steps, batch_size=config.batch_size, dataset_size=len(self.data.train)
    )
    self.total_steps, self.stop_step = planned_steps(config, len(self.data.train))
    self.warmup_steps = to_steps(config.optim.warmup)
    self.log_every = max(to_steps(config.train.log_every), 1)
    self.checkpoint_every = to_steps(config.train.checkpoint_every)
    self.image_size = config.model.image.image_size
    self.max_len = config.model.text.max_len
    self.train_preprocess = transforms.Preprocess.from_config(
      config, self.tokenizer, train=True, prepare=self.loss_fn.prepare
    )
    self.eval_preprocess = transforms.Preprocess.from_config(config, self.tokenizer)
    self._build_state_shardings()
    self._check_objectives_fit_model()

  def _check_padding_is_not_a_token(self):
    """CLIP's BPE pads with id 0, which is also the token "!": a text tower that masks id 0 as padding
    would drop every "!" of a caption (open_clip masks nothing: its causal tower never looks past the
    end-of-text token, where it pools). CoCa is the exception its reference makes: open_clip's CoCa masks
    pad id 0 in its text tower (`TextTransformer._build_additive_mask`), '!' included."""
    pad = self.tokenizer.pad_id
    if (
      getattr(self.tokenizer, "pad_is_token", False)
      and self.config.model.name != "coca"
      and self.config.model.text.get("pad_id", 0) == pad
    ):
      raise ConfigError(
        f"data.tokenizer={self.config.data.tokenizer!r} pads with id {pad}, which is also a real token "
        f"({self.tokenizer.decode([pad])!r}), but model.text.pad_id={pad} masks it as padding; set "
        "--config.model.text.pad_id=-1 and --config.model.text.pool=argmax (open_clip's pooling at "
        "the end-of-text token)"
      )

  # --- state ---------------------------------------------------------------------------------------

  def _batch_shapes(self, n: int) -> dict:
    return {
      "image": ((n, self.image_size, self.image_size, 3), np.float32),
      "text": ((n, self.max_len), np.int32),
    }

  def dummy_batch(self, batch_size: int | None = None):
    n = batch_size or sharding.data_parallel_size(self.mesh)
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self._batch_shapes(n).items()}

  def _boxed_params(self, rng):
    batch = self.dummy_batch()
    return self.model.init({"params": rng, "dropout": rng}, batch["image"], batch["text"])["params"]

  def _build_state_shardings(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      boxed = jax.eval_shape(self._boxed_params, ABSTRACT_KEY)
    self.param_shardings = sharding.logical_shardings(
      boxed, self.mesh, fsdp_min_bytes=int(self.config.get("fsdp_min_mib", 4) * 2**20)
    )
    self.abstract_params = nn.unbox(boxed)
    locked = models.locked_regex(self.config.model.get("locked", ()))
    self.tx, self.schedule = optim.make_optimizer(
      self.config.optim,
      self.abstract_params,
      self.total_steps,
      self.warmup_steps,
      extra_frozen=locked,
    )
    abstract_state = jax.eval_shape(self._create_state, ABSTRACT_KEY)
    self.state_shardings = sharding.state_shardings(abstract_state, self.param_shardings, self.mesh)

  def _check_objectives_fit_model(self):
    """Traces one loss on abstract inputs, so that an objective the model cannot feed (an output it does not
    give) is a config error now, not after the first step's compile."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      jax.eval_shape(
        self.loss,
        self.abstract_params,
        self.abstract_batch(sharding.data_parallel_size(self.mesh)),
        ABSTRACT_KEY,
      )

  def abstract_batch(self, batch_size: int) -> dict:
    """ShapeDtypeStructs of a batch: (uint8) images, text and every field the objectives prepare on the
    host."""
    # Shapes only: a pod's global batch (65536 images at 224 px: 37 GiB) never exists on the host.
    batch = {
      k: jax.ShapeDtypeStruct(shape, dtype)
      for k, (shape, dtype) in self._batch_shapes(batch_size).items()
    }
    batch["image"] = batch["image"].update(dtype=np.uint8)  # as the training pipeline sends them
    for field, (shape, dtype) in self.loss_fn.batch_fields.items():
      batch[field] = jax.ShapeDtypeStruct((batch_size, *shape), dtype)
    return batch

  def _create_state(self, root_key):
    params = nn.unbox(self._boxed_params(jax.random.fold_in(root_key, 0)))
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=root_key
    )

  def init_state(self, apply_init_from: bool = True) -> TrainState:
    """A fresh state, initialised by one jit straight into its shardings, then `init_from` applied."""
    root_key = jax.random.PRNGKey(self.config.seed)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      state = jax.jit(self._create_state, out_shardings=self.state_shardings)(root_key)
    init_from = self.config.get("init_from", {})
    if apply_init_from and init_from and init_from.get("workdir"):
      # Adam's moments start at zero whatever the parameter values, so the fresh optimizer state fits.
      loaded = self.load_params(
        init_from.workdir, init_from.get("step", -1), init_from.get("include", ".*")
      )
      state = state.replace(params=checkpoint.merge_params(state.params, loaded))
    return state

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and shardings, without allocating it (restore targets, AOT compiles)."""
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(self._create_state, ABSTRACT_KEY),
      self.state_shardings,
    )

  def abstract_params_sharded(self):
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      self.abstract_params,
      self.param_shardings,
    )

  def load_params(self, workdir: str, step: int | None = None, include: str = ".*"):
    """Parameters whose path fully matches `include`, from the latest (or `step`) checkpoint of a run or a
    converted model in `workdir`, placed in this experiment's shardings."""
    regex = re.compile(include)
    loaded, step = checkpoint.restore_params(
      storage.join(storage.resolve(workdir), "checkpoints"),
      step,
      self.abstract_params_sharded(),
      include=None if include == ".*" else regex.fullmatch,
    )
    count = len(jax.tree.leaves(loaded))
    if not count:
      raise ConfigError(f"init_from.include {include!r} matches no parameter path")
    self.log(f"Loaded {count} parameter arrays matching {include!r} from {workdir} (step {step})")
    return loaded

  # --- data ----------------------------------------------------------------------------------------

  def train_iterator(self):
    streamed = not hasattr(self.data.train, "__getitem__")  # tar shards: checked as they stream
    if not streamed and self.data.train[0].get("caption") is None:
      raise ConfigError(
        f"{self.data.description} has no captions (an image folder, or a classification dataset "
        "read without data.caption_key?); the objectives train on image-text pairs: evaluate on "
        "it, and train on captioned data"
      )
    return pipeline.train_iterator(
      self.data.train,
      self.train_preprocess,
      global_batch=self.batch_size,
      seed=self.config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      num_threads=self.config.data.get("num_threads", 8),
      worker_processes=self.config.data.get("worker_processes", 0),
    )

  def global_batch(self, local_batch):
    return sharding.global_batch_from_local(local_batch, self.mesh)

  def batch_shardings(self, batch):
    return jax.tree.map(lambda _: sharding.batch_sharding(self.mesh), batch)

  # --- step ----------------------------------------------------------------------------------------

  def model_batch(self, batch):
    """The batch as the model reads it: uint8 images normalised on device (float images, already
    normalised on the host, pass as they are)."""
    return {**batch, "image": transforms.normalise_on_device(batch["image"], *self.pixel_stats)}

  def loss(self, params, batch, rng, *, train: bool = True, model=None):
    """(loss, metrics) of the objectives on one forward pass of `model` (default: this experiment's)."""
    return self.loss_fn(
      params, self.model_batch(batch), rng, model=model or self.model, train=train
    )

  def train_step_fn(self):
    """(state, batch) -> (state, metrics). Pure; `jit_train_step` adds the shardings."""
    nan_step = self.config.get("debug", {}).get("nan_at_step", -1)

    def train_step(state, batch):
      rng = jax.random.fold_in(state.rng, state.step)

      def loss_fn(params):
        loss, metrics = self.loss(params, batch, rng)
        if nan_step >= 0:  # fault injection, to test the divergence guard
          loss = jnp.where(state.step + 1 == nan_step, jnp.nan, loss)
        return loss, metrics

      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      if self.after_update is not None:
        params = self.after_update(params)
      metrics = {
        **metrics,
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
        "lr": self.schedule(state.step),
      }
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step

  def jit_train_step(self):
    return jax.jit(
      self.train_step_fn(),
      in_shardings=(self.state_shardings, sharding.batch_sharding(self.mesh)),
      out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
      donate_argnums=0,
    )

  def compile_train_step(self, state, batch):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
      return self.jit_train_step().lower(state, batch).compile()
