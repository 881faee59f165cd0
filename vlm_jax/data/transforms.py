"""Host-side preprocessing: image resize/augment/normalise and caption tokenisation."""

from collections.abc import Callable
import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from PIL import Image

from vlm_jax.data import sources
from vlm_jax.errors import ConfigError

# OpenAI CLIP's normalisation, the convention of the dual-tower models this project imports.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalise(pixels, mean, std, xp=jnp):
  """uint8 [..., 3] pixels -> float32 (pixels / 255 - mean) / std, with NumPy (`xp=np`) or on device."""
  scaled = pixels.astype(xp.float32) / xp.float32(255.0)
  return (scaled - xp.asarray(mean, xp.float32)) / xp.asarray(std, xp.float32)


def normalise_on_host(images, mean, std) -> np.ndarray:
  """`normalise_on_device` in NumPy, for consumers outside the step (a PyTorch reference)."""
  images = np.asarray(images)
  return normalise(images, mean, std, np) if images.dtype == np.uint8 else images


def normalise_on_device(images, mean, std):
  """The model input of a batch's images: uint8 training pixels are normalised here, inside the step;
  float images (evaluation, inference) were normalised on the host and pass through."""
  return normalise(images, mean, std) if images.dtype == jnp.uint8 else images


def _to_text(caption) -> str:
  return caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """The shorter side resized to `size` (bicubic), then the centred size x size square, with
  torchvision's Resize(size) + CenterCrop(size) arithmetic (CLIP's and open_clip's evaluation)."""
  w, h = image.size
  short, long = min(w, h), max(w, h)
  long = int(size * long / short)
  image = image.resize((size, long) if w <= h else (long, size), Image.Resampling.BICUBIC)
  w, h = image.size
  left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def crop_range(value, key: str = "data.augment.crop_scale"):
  """A (low, high) range of `data.augment` from its config value, or None for no crop: None, () and (None,)
  (what `--config.data.augment.crop_scale=None` gives) all mean none."""
  if value is None or tuple(value) in ((), (None,)):
    return None
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(
      f"{key}={tuple(value)!r}: give two numbers, e.g. --config.{key}='(0.9, 1.0)', or None"
    ) from None
  top = (
    1.0 if key.endswith("crop_scale") else float("inf")
  )  # an area fraction; a ratio is unbounded
  if not 0 < low <= high <= top:
    raise ConfigError(f"{key}={(low, high)}: needs 0 < low <= high{' <= 1' if top == 1 else ''}")
  return low, high


def random_resized_crop_box(width: int, height: int, rng, scale, ratio) -> tuple:
  """(left, top, crop width, crop height) of torchvision's RandomResizedCrop.get_params, the training
  crop of open_clip: up to ten draws of an area fraction in `scale` and a log-uniform aspect ratio in
  `ratio` until the box fits, else the centred box of the closest allowed ratio."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


@dataclasses.dataclass
class Preprocess:
  """example dict -> {'image': float32 [S, S, 3], 'text': int32 [max_len], labels...}.

  Training batches (`normalise=False`, what `from_config(train=True)` builds) keep the pixels as uint8:
  a quarter of float32's bytes cross to the device, where `normalise_on_device` (run by the objectives'
  loss function) scales them. Evaluation and inference get normalised float32 images.

  Random crops and flips use the rng passed in (keyed on the example's global position), so the
  augmented batch does not depend on the number of processes. Flips are off by default: captions
  of the embedded data say 'left' and 'right'.
  """

  image_size: int
  tokenizer: object
  max_len: int
  mean: tuple = CLIP_MEAN
  std: tuple = CLIP_STD
  crop_scale: tuple | None = None  # e.g. (0.9, 1.0): RandomResizedCrop's area range when training
  crop_ratio: tuple = (3 / 4, 4 / 3)  # and its aspect-ratio range
  flip: bool = False
  label_keys: tuple = ()
  lowercase: bool = False
  normalise: bool = True  # False: uint8 pixels, normalised on device
  # Evaluation's resize, CLIP's: the shorter side to image_size, then the centre square (torchvision's
  # Resize + CenterCrop arithmetic). Off (training): the whole image is resized to the square.
  center_crop: bool = False
  # The objectives' host-side preparation: (example, out, preprocess, rng) -> extra fields (word boundaries
  # for whole-word masking, a question/answer pair, ...); `vlm_jax.objectives` builds it.
  prepare: Callable | None = None

  @classmethod
  def from_config(cls, config, tokenizer, *, train: bool = False, **fields):
    """The preprocessing a run config defines: model input size and text length, data normalisation and
    lower-casing, and (train=True) the data augmentation. Evaluation, inference and tools share it."""
    aug = config.data.get("augment", {}) if train else {}
    return cls(
      config.model.image.image_size,
      tokenizer,
      config.model.text.get("max_len", 0),
      mean=tuple(config.data.get("mean", CLIP_MEAN)),
      std=tuple(config.data.get("std", CLIP_STD)),
      lowercase=config.data.get("lowercase", False),
      crop_scale=crop_range(aug.get("crop_scale")),
      crop_ratio=crop_range(aug.get("crop_ratio", (3 / 4, 4 / 3)), "data.augment.crop_ratio"),
      flip=aug.get("flip", False),
      normalise=not train,
      center_crop=not train,
      **fields,
    )

  def image(self, image, rng: np.random.Generator | None = None, key: str = "") -> np.ndarray:
    """A PIL image, an array, or encoded bytes (undecodable bytes raise `sources.SampleError`)."""
    if isinstance(image, (bytes, bytearray)):
      image = sources.decode_image(image, key)
    elif not isinstance(image, Image.Image):
      image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if rng is not None and self.crop_scale is not None:
      x, y, w, h = random_resized_crop_box(*image.size, rng, self.crop_scale, self.crop_ratio)
      image = image.crop((x, y, x + w, y + h))
    if self.center_crop and image.size[0] != image.size[1]:
      image = center_crop(image, self.image_size)
    if image.size != (self.image_size, self.image_size):
      image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, np.uint8)
    if rng is not None and self.flip and rng.uniform() < 0.5:
      pixels = pixels[:, ::-1]
    if not self.normalise:
      return np.ascontiguousarray(pixels)
    return normalise(pixels, self.mean, self.std, np)

  def text(self, caption, key: str = "") -> np.ndarray:
    """Token ids; a missing or empty caption raises `sources.SampleError`."""
    caption = sources.clean_caption(caption, key)
    return self.tokenizer.encode(caption.lower() if self.lowercase else caption, self.max_len)

  def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
    key = str(example.get("key", ""))
    out = {
      "image": self.image(example["image"], rng, key),
      "text": self.text(example.get("caption"), key),
    }
    if self.prepare is not None:
      out.update(self.prepare(example, out, self, rng))
    for key in self.label_keys:
      out[key] = np.int32(example[key])
    return out

  def prompt(self, question) -> np.ndarray:
    """Start token + question tokens, right-padded: the prompt a prefix-LM answers."""
    ids = self.tokenizer.encode(_to_text(question), self.max_len)
    pad = self.tokenizer.pad_id
    return np.where(ids == self.tokenizer.eos_id, pad, ids).astype(np.int32)

  def question_answer(self, question, answer):
    """(int32 [max_len] start + question + answer + end, int32 prefix length = start + question)."""
    question_ids = [int(t) for t in self.prompt(question) if t != self.tokenizer.pad_id]
    answer_ids = [
      int(t)
      for t in self.tokenizer.encode(_to_text(answer), self.max_len)
      if t not in (self.tokenizer.pad_id, self.tokenizer.bos_id)
    ]
    ids = question_ids + answer_ids
    if len(ids) > self.max_len or answer_ids[-1:] != [self.tokenizer.eos_id]:
      raise ConfigError(
        f"question {_to_text(question)!r} and answer {_to_text(answer)!r} need more than "
        f"{self.max_len} tokens; raise model.text.max_len"
      )
    out = np.full(self.max_len, self.tokenizer.pad_id, np.int32)
    out[: len(ids)] = ids
    return out, np.int32(len(question_ids))
