"""The public inference API: a trained or converted workdir as an open_clip-style model.

  m = vlm_jax.load("runs/clip_tiny")             # latest checkpoint; vlm_jax.load(workdir, step=200)
  pixels = m.preprocess([pil_image, uint8_array])
  image_emb = m.encode_image(pixels)             # [n, d] float32, L2-normalised
  text_emb = m.encode_text(m.tokenize(["a photo of a red circle"]))
  probs = m.similarity(pixels, m.tokenize(texts), probabilities=True)  # the model's own scale (and bias)
  m.match(pixels, m.tokenize(texts))             # ViLT / FLAVA: P(image i and text i match)
  m.fill_mask(pixels, ["a [MASK] circle"])       # ViLT / FLAVA: the likeliest words at each [MASK]
  m.caption(pixels)                              # models with a text decoder (CoCa, prefix-LMs)
  m.answer(pixels, ["what color is the shape?"])  # prefix-LMs: the question is the prefix

Preprocessing is the run's eval preprocessing (resize, normalisation, tokenizer, lower-casing), built by
the same assembly as training (`vlm_jax.assembly.experiment`), so embeddings match what the evaluators
saw.
"""

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import (
  builtins,  # noqa: F401  pylint: disable=unused-import  (registers the built-ins)
  config_utils,
  generate,
  models,
  storage,
)
from vlm_jax.assembly import experiment
from vlm_jax.core import checkpoint
from vlm_jax.data import transforms
from vlm_jax.errors import ConfigError

MASK = "[MASK]"  # marks the words `fill_mask` fills


class Pretrained:
  def __init__(self, config, params=None, *, step: int | None = None, batch_size: int = 256):
    """params: None until set (`load` restores them into `abstract_params()`)."""
    self.config, self.params, self.step, self.batch_size = config, params, step, batch_size
    self._no_vocabulary = None
    try:
      self._tokenizer = experiment.build_tokenizer(config)
      vocab_size = self._tokenizer.vocab_size
      # A converted checkpoint fixes its vocabulary (model.text.vocab_size): a tokenizer with more ids
      # (e.g. CLIP's shipped BPE for a model with another vocabulary) is not its tokenizer.
      fixed = config.model.get("text", {}).get("vocab_size")
      if fixed and vocab_size > fixed:
        raise ConfigError(
          f"the {config.data.tokenizer} tokenizer has {vocab_size} ids, more than the model's "
          f"vocabulary of {fixed} (model.text.vocab_size); set data.tokenizer_path to its own"
        )
    except ConfigError as e:
      # A converted model whose vocabulary was not found still encodes images; text calls say why not.
      vocab_size = config.model.get("text", {}).get("vocab_size")
      if not vocab_size:
        raise
      self._tokenizer, self._no_vocabulary = None, str(e)
    # The builders prefer a vocabulary size fixed in the config (imported weights) over the tokenizer's.
    self.model = models.build(config.model, vocab_size)
    self.image_size, self.max_len = config.model.image.image_size, config.model.text.max_len
    self._preprocess = transforms.Preprocess.from_config(config, self._tokenizer)
    apply = lambda method: jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method))
    self._encode_image, self._encode_text = apply("encode_image"), apply("encode_text")
    self._captioners = {}

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      raise ConfigError(
        f"this model has no vocabulary ({self._no_vocabulary}), so it cannot read or write text; "
        "set data.tokenizer_path in the workdir's config.json to the model's vocabulary file, or "
        "convert again with --tokenizer PATH"
      )
    return self._tokenizer

  def abstract_params(self, sharding=None):
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      models.abstract_params(self.model, self.image_size, self.max_len),
    )

  def preprocess(self, images) -> np.ndarray:
    """PIL images or uint8 [H, W, 3] arrays (one, or a list / stacked array) -> float32 [n, S, S, 3]:
    the run's evaluation preprocessing (shorter side to S, centre crop, the run's normalisation)."""
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

  def similarity(self, pixels, token_ids, probabilities: bool = False) -> np.ndarray:
    """[images, texts] logits as the model was trained to give them: exp(logit scale) x cosine
    similarity (clamped as in training), plus the learnt bias for sigmoid (SigLIP) models. probabilities:
    a softmax over the texts for each image (CLIP-style), or each pair's sigmoid (SigLIP-style)."""
    if "logit_scale" not in self.params or not hasattr(self.model, "encode_text"):
      raise ValueError(
        f"model {self.config.model.name!r} has no contrastive embeddings; score image-text pairs "
        "with m.match(pixels, token_ids)"
      )
    scale = np.exp(
      min(float(self.params["logit_scale"]), float(getattr(self.model, "logit_scale_max", np.inf)))
    )
    logits = scale * self.encode_image(pixels) @ self.encode_text(token_ids).T
    if "logit_bias" in self.params:
      logits = logits + float(self.params["logit_bias"])
      return np.asarray(jax.nn.sigmoid(logits)) if probabilities else logits
    return np.asarray(jax.nn.softmax(logits, axis=1)) if probabilities else logits

  @property
  def _num_patches(self) -> int:
    return (self.image_size // models.patch_size(self.config.model)) ** 2

  def _check_fusion(self, name: str):
    if not hasattr(self.model, "itm_logits"):
      raise ValueError(
        f"model {self.config.model.name!r} has no image-text matching head; {name} needs a ViLT or "
        "FLAVA model (dual towers: m.similarity)"
      )

  def _fusion_method(self, name: str):
    self._check_fusion(name)
    if name not in self._captioners:
      if name == "match":
        fn = lambda p, b: jax.nn.softmax(
          self.model.apply({"params": p}, b["image"], b["text"], method="itm_logits"), axis=-1
        )[:, 1]
      elif hasattr(self.model, "mmm"):  # FLAVA: the multimodal encoder's MLM head, no patch masked
        fn = lambda p, b: jax.nn.softmax(
          self.model.apply(
            {"params": p},
            b["image"],
            b["text"],
            jnp.zeros((b["text"].shape[0], self._num_patches), bool),
            method="mmm",
          )[0]
        )
      else:  # ViLT
        fn = lambda p, b: jax.nn.softmax(
          self.model.apply({"params": p}, b["image"], b["text"], method="mlm_logits")
        )
      self._captioners[name] = jax.jit(fn)
    return self._captioners[name]

  def match(self, pixels, token_ids) -> np.ndarray:
    """[n] probability that image i and text i match, from the image-text matching head (ViLT, FLAVA).
    To score every pair, repeat the images and tile the texts."""
    if len(pixels) != len(token_ids):
      raise ValueError(
        f"{len(pixels)} images for {len(token_ids)} texts; match scores pairs, give as many of each"
      )
    batch = {"image": np.asarray(pixels, np.float32), "text": np.asarray(token_ids, np.int32)}
    return self._batched(self._fusion_method("match"), batch)

  def tokenize_masked(self, texts) -> np.ndarray:
    """Like `tokenize`, with each "[MASK]" in the texts one mask token."""
    tok = self.tokenizer
    if getattr(tok, "mask_id", -1) < 0:
      raise ValueError("this model's tokenizer has no mask token")
    rows = []
    for text in [texts] if isinstance(texts, str) else texts:
      pieces = text.split(MASK)
      if len(pieces) < 2:
        raise ValueError(f"{text!r} has no {MASK}; write {MASK} where a word is to be filled in")
      body = []
      for i, piece in enumerate(pieces):
        body += ([tok.mask_id] if i else []) + _body_ids(tok, piece)
      rows.append(tok._frame(np.asarray(body, np.int32), self.max_len))  # pylint: disable=protected-access
    return np.stack(rows)

  def fill_mask(self, pixels, texts, top_k: int = 5) -> list:
    """For each image and its text with "[MASK]"s: per mask, the `top_k` (token, probability) the model
    predicts there given the image (ViLT's MLM head, FLAVA's multimodal one)."""
    ids = self.tokenize_masked(texts)
    if len(pixels) != len(ids):
      raise ValueError(f"{len(pixels)} images for {len(ids)} texts; give one text per image")
    self._check_fusion("fill_mask")
    probs = self._batched(
      self._fusion_method("fill_mask"),
      {"image": np.asarray(pixels, np.float32), "text": ids},
    )
    out = []
    for row, p in zip(ids, probs):
      fills = []
      for position in np.flatnonzero(row == self.tokenizer.mask_id):
        best = np.argsort(-p[position])[:top_k]
        fills.append([(self.tokenizer.decode([int(i)]), float(p[position, i])) for i in best])
      out.append(fills)
    return out


def _body_ids(tokenizer, text: str) -> list:
  """The ids `text` encodes to, without the begin/end tokens and padding."""
  if not text.strip():
    return []
  ids = tokenizer.encode(text, 4 * len(text.encode("utf-8")) + 8)
  end = int(np.flatnonzero(ids == tokenizer.eos_id)[0])
  return [int(i) for i in ids[1:end]]


def load(workdir: str, step: int | None = None, *, batch_size: int = 256) -> Pretrained:
  """A run's or converted model's workdir -> `Pretrained` (latest checkpoint unless `step` is given)."""
  workdir = storage.resolve(workdir)
  model = Pretrained(config_utils.load_workdir_config(workdir), batch_size=batch_size)
  model.params, model.step = checkpoint.restore_params(
    storage.join(workdir, "checkpoints"), step, model.abstract_params()
  )
  return model
