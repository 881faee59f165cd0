"""The public inference API: a trained or converted workdir as an open_clip-style model.

  m = vlm_jax.load("runs/clip_tiny")             # latest checkpoint; vlm_jax.load(workdir, step=200)
  pixels = m.preprocess([pil_image, uint8_array])
  image_emb = m.encode_image(pixels)             # [n, d] float32, L2-normalised
  text_emb = m.encode_text(m.tokenize(["a photo of a red circle"]))
  probs = softmax(100 * image_emb @ text_emb.T)
  m.caption(pixels)                              # models with a text decoder (CoCa, prefix-LMs)
  m.answer(pixels, ["what color is the shape?"])  # prefix-LMs: the question is the prefix

Preprocessing is the run's eval preprocessing (resize, normalisation, tokenizer, lower-casing), so
embeddings match what the evaluators saw.
"""

import jax
import numpy as np

from vlm_jax import (
  builtins,  # noqa: F401  pylint: disable=unused-import  (registers the built-ins)
  config_utils,
  generate,
  models,
  storage,
)
from vlm_jax.core import checkpoint
from vlm_jax.data import tokenizers, transforms
from vlm_jax.registry import DATASETS


class Pretrained:
  def __init__(self, config, params=None, *, step: int | None = None, batch_size: int = 256):
    """params: None until set (`load` restores them into `abstract_params()`)."""
    self.config, self.params, self.step, self.batch_size = config, params, step, batch_size
    self.tokenizer = _tokenizer(config)
    # The builders prefer a vocabulary size fixed in the config (imported weights) over the tokenizer's.
    self.model = models.build(config.model, self.tokenizer.vocab_size)
    self.image_size, self.max_len = config.model.image.image_size, config.model.text.max_len
    self._preprocess = transforms.Preprocess.from_config(config, self.tokenizer)
    apply = lambda method: jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method))
    self._encode_image, self._encode_text = apply("encode_image"), apply("encode_text")
    self._captioners = {}

  def abstract_params(self, sharding=None):
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      models.abstract_params(self.model, self.image_size, self.max_len),
    )

  def preprocess(self, images) -> np.ndarray:
    """PIL images or uint8 [H, W, 3] arrays (one, or a list / stacked array) -> float32 [n, S, S, 3]."""
    if (
      isinstance(images, np.ndarray)
      and images.ndim == 3
      or not isinstance(images, (list, tuple, np.ndarray))
    ):
      images = [images]
    return np.stack([self._preprocess.image(image) for image in images])

  def tokenize(self, texts) -> np.ndarray:
    """A string or list of strings -> int32 [n, max_len] token ids."""
    return self.tokenizer.encode_batch(
      [texts] if isinstance(texts, str) else list(texts), self.max_len
    )

  def _batched(self, fn, inputs):
    """fn(params, inputs) over fixed-size batches (so that it compiles once); inputs: an array or a dict
    of arrays with the same first dimension."""
    n = len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
    out = []
    for start in range(0, n, self.batch_size):

      def chunk(x):
        x = np.asarray(x)[start : start + self.batch_size]  # noqa: B023  (called within this iteration)
        return np.concatenate([x, np.repeat(x[-1:], self.batch_size - len(x), axis=0)])

      padded = (
        {k: chunk(v) for k, v in inputs.items()} if isinstance(inputs, dict) else chunk(inputs)
      )
      out.append(np.asarray(fn(self.params, padded))[: min(self.batch_size, n - start)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def encode_image(self, pixels) -> np.ndarray:
    """float32 [n, S, S, 3] (from `preprocess`) -> L2-normalised [n, embed_dim]."""
    return self._batched(self._encode_image, np.asarray(pixels, np.float32))

  def _check_decoder(self):
    if not hasattr(self.model, "decode"):
      raise ValueError(f"model {self.config.model.name!r} has no text decoder to write with")

  def caption(
    self, pixels, max_len: int | None = None, beams: int = 1, length_penalty: float = 0.0
  ) -> list:
    """Captions (strings) of preprocessed images: greedy, or beam search with `beams` > 1."""
    self._check_decoder()
    key = ("caption", max_len or self.max_len, beams, length_penalty)
    if key not in self._captioners:
      self._captioners[key] = jax.jit(
        generate.captioner(self.model, self.tokenizer, key[1], beams, length_penalty)
      )
    tokens = self._batched(self._captioners[key], np.asarray(pixels, np.float32))
    return [self.tokenizer.decode(row) for row in tokens]

  def answer(self, pixels, questions, max_answer_len: int = 8, beams: int = 1) -> list:
    """Answers (strings) to one question per preprocessed image, from a prefix-LM (question = prefix)."""
    self._check_decoder()
    if isinstance(questions, str):
      questions = [questions] * len(pixels)
    if len(questions) != len(pixels):
      raise ValueError(
        f"{len(questions)} questions for {len(pixels)} images; give one per image (or one string)"
      )
    key = ("answer", max_answer_len, beams)
    if key not in self._captioners:
      tok = self.tokenizer
      self._captioners[key] = jax.jit(
        lambda p, b: generate.generate(
          self.model,
          p,
          b["image"],
          b["prompt"],
          max_answer_len,
          eos_id=tok.eos_id,
          pad_id=tok.pad_id,
          beams=beams,
          vocab_size=tok.vocab_size,
        )
      )
    prompts = np.stack([self._preprocess.prompt(q) for q in questions])
    tokens = self._batched(
      self._captioners[key], {"image": np.asarray(pixels, np.float32), "prompt": prompts}
    )
    return [self.tokenizer.decode(row) for row in tokens]

  def encode_text(self, token_ids) -> np.ndarray:
    """int32 [n, max_len] (from `tokenize`) -> L2-normalised [n, embed_dim]."""
    return self._batched(self._encode_text, np.asarray(token_ids, np.int32))


def _tokenizer(config):
  path = config.data.get("tokenizer_path", "")
  dataset_tokenizer = None
  if config.data.tokenizer == "sentencepiece" and not path:
    dataset_tokenizer = DATASETS.get(config.data.name)(config.data).tokenizer_path
  return tokenizers.get_tokenizer(config.data.tokenizer, path, dataset_tokenizer)


def load(workdir: str, step: int | None = None, *, batch_size: int = 256) -> Pretrained:
  """A run's or converted model's workdir -> `Pretrained` (latest checkpoint unless `step` is given)."""
  workdir = storage.resolve(workdir)
  model = Pretrained(config_utils.load_workdir_config(workdir), batch_size=batch_size)
  model.params, model.step = checkpoint.restore_params(
    storage.join(workdir, "checkpoints"), step, model.abstract_params()
  )
  return model
