"""The config skeleton every experiment starts from: data, optimiser, training, evaluation and debug keys
with their defaults. Experiment files (`experiments/*.py`) and converted checkpoints fill in the model and
the objectives; nothing else needs to be repeated."""

import ml_collections
from ml_collections import config_dict

ZERO_SHOT_TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = "data:-1"  # axes data/fsdp/tensor, e.g. "data:4,fsdp:2"; -1 = the remaining devices
  c.fsdp_min_mib = (
    4.0  # parameters smaller than this stay whole on every fsdp shard (big_vision's 4 MB)
  )
  c.batch_size = 64
  c.eval_batch_size = 256
  c.model = ml_collections.ConfigDict(
    # dtype: the compute dtype ("auto": bfloat16 on GPU/TPU, float32 on CPU); parameters and optimizer
    # state stay param_dtype. attention: auto | xla | cudnn | reference (models/layers.py).
    dict(dtype="auto", param_dtype="float32", remat="none", scan_layers=False, attention="auto")
  )
  c.objectives = ml_collections.ConfigDict()
  # With no dataset configured, the embedded synthetic data (rendered at 64px, resized to the model input).
  # tokenizer_path "" = the dataset's own SentencePiece model. mean/std: the image normalisation.
  # max_objects: 1, or up to 3 copies of the shape per image (counting questions).
  c.data = ml_collections.ConfigDict(
    dict(
      name="embedded",
      image_size=64,
      seed=0,
      max_objects=1,
      data_dir="",
      tokenizer="sentencepiece",
      tokenizer_path="",
      # Decoding: threads of the loading process; worker_processes > 0 decodes in that many grain worker
      # processes instead (hosts whose decoding is GIL-bound); device_prefetch: batches kept in flight.
      num_threads=8,
      worker_processes=0,
      device_prefetch=2,
      lowercase=False,
      mean=(0.48145466, 0.4578275, 0.40821073),
      std=(0.26862954, 0.26130258, 0.27577711),
      # crop_scale: torchvision's RandomResizedCrop area range, e.g. (0.9, 1.0) as open_clip (unset: the
      # whole image resized); crop_ratio: its aspect-ratio range.
      augment=dict(
        crop_scale=config_dict.placeholder(tuple), crop_ratio=(3 / 4, 4 / 3), flip=False
      ),
      # Real data (vlm_jax/data/__init__.py says which dataset reads which): prepared / folder ...
      path="",
      train_path="",
      classnames="",
      test_fraction=0.5,
      # ... TFDS (image_key / caption_key: feature paths; caption_key "" for classification data) ...
      tfds_name="",
      train_split="train",
      test_split="test",
      image_key="image",
      caption_key="captions/text",
      # ... and streamed tar shards (workers: reader threads per process).
      shards="",
      test_shards="",
      shuffle_buffer=1000,
      workers=2,
      resampled=False,
      num_samples=0,
    )
  )
  # The optimizer's conventions are named choices (core/optim.py); these defaults are open_clip's (PyTorch
  # AdamW) and every recipe sets its own reference's.
  c.optim = ml_collections.ConfigDict(
    dict(
      name="adamw",  # adamw | adafactor (big_vision's)
      lr=5e-4,
      warmup="2000 steps",
      warmup_from="one_step",  # zero (optax, big_vision) | one_step (open_clip: lr * (t + 1) / warmup)
      schedule="cosine",
      end_lr_factor=0.0,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      mu_dtype="float32",  # the first moment's dtype (big_vision's Adafactor keeps it in bfloat16)
      adafactor=dict(decay_rate=0.8, min_dim_size_to_factor=32),
      weight_decay=0.2,
      weight_decay_mode="lr_coupled",  # lr_coupled (lr * wd, PyTorch) | decoupled (wd, big_vision)
      decay_mask="open_clip",  # open_clip | big_vision (.*/kernel) | all | a regex over paths
      grad_clip_norm=0.0,
      frozen="",
      trainable="",
      lr_multipliers=(),
    )
  )
  # init_from: start from another run's (or a converted model's) parameters; include: the paths to load.
  c.init_from = ml_collections.ConfigDict(dict(workdir="", step=-1, include=".*"))
  c.train = ml_collections.ConfigDict(
    dict(
      duration="32 epochs",
      log_every="50 steps",
      checkpoint_every="1000 steps",
      keep_checkpoints=3,
      async_checkpoints=True,
      mfu=True,
      max_steps=0,
      profile_steps=(),  # (a, b): an XProf trace of steps a+1..b in workdir/profile (train/profiler.py)
      # Weights & Biases (pip install -e ".[wandb]"): the scalars TensorBoard gets, and the config.
      # WANDB_MODE=offline writes the run locally; name: default the workdir's name.
      wandb=False,
      wandb_project="vlm_jax",
      wandb_entity="",
      wandb_name="",
      wandb_tags=(),
    )
  )  # > 0: stop after this many steps (a smoke test), on the schedule of the full duration
  c.evals = ml_collections.ConfigDict(
    {
      "zero_shot": dict(
        every="1 epochs", label_keys=("shape", "color"), templates=ZERO_SHOT_TEMPLATES, limit=0
      ),
      "retrieval": dict(every="1 epochs", ks=(1, 5, 10), limit=1000),
    }
  )
  c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1))
  return c
