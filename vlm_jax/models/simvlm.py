"""SimVLM: an encoder-decoder PrefixLM (Wang et al. 2022).

The encoder reads image patches (optionally through a small convolutional stem, SimVLM's stand-in for its
ResNet stages) followed by the text prefix, with bidirectional attention; the decoder predicts the rest
of the text causally, cross-attending to the encoder. The split point is chosen per example by the
objective (`objectives/prefix_lm.py`); `text_only` hides the image (text-only PrefixLM batches). Word
embeddings are shared by encoder, decoder and output layer, as in SimVLM / T5.

Options that make it big_vision's CapPa encoder-decoder (models/proj/cappa/cappa.py): `encoder_text=False`
(the encoder reads the image only), `decoder_bias=False` (no biases in the decoder's blocks), `head='untied'`
(a separate, zero-initialised output layer instead of the word embeddings) and `text.mask_token=True` (an
input embedding row after the output vocabulary, fed to the decoder of parallel-prediction rows).

Parameter groups: `image_*` (stem, patch and position embeddings), `text_embed`, `encoder*`, `decoder*`.
"""

from typing import Any

import einops
import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.errors import ConfigError
from vlm_jax.models import layers
from vlm_jax.models.lm import ServesLM
from vlm_jax.models.two_tower import l2_normalize
from vlm_jax.requests import LMRequest, token_valid


class ConvStem(nn.Module):
  """Two 3x3 convolutions (GELU) that give each patch local image features before patchifying."""

  channels: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = nn.Conv(
        self.channels,
        (3, 3),
        padding="SAME",
        name=f"conv{i + 1}",
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )(x)
      x = layers.ACTIVATIONS["gelu"](x)
    return x


class Stash(nn.Module):
  """Keeps the encoder output between cached decoding calls (the `cache` collection)."""

  @nn.compact
  def __call__(self, encoded=None, valid=None):
    if encoded is None:
      return self.get_variable("cache", "encoded"), self.get_variable("cache", "valid")
    self.variable("cache", "encoded", jnp.zeros, encoded.shape, encoded.dtype).value = encoded
    self.variable("cache", "valid", jnp.zeros, valid.shape, bool).value = valid
    return encoded, valid


HEADS = ("tied", "untied")


class SimVLM(ServesLM, nn.Module):
  image: dict  # patch_size, image_size, stem (conv stem channels; 0 = none)
  text: dict  # vocab_size, vocab_used, max_len, pad_id, mask_token
  encoder: dict  # width, depth, num_heads, mlp_dim
  decoder: dict  # depth, num_heads, mlp_dim (width: the encoder's)
  act: str = "gelu"
  dropout: float = 0.0
  ln_eps: float = 1e-5
  encoder_text: bool = True  # False: the encoder reads the image only (CapPa)
  decoder_bias: bool = True
  head: str = (
    "tied"  # tied: logits from the word embeddings; untied: a zero-initialised dense layer
  )
  remat: str = "none"
  scan: bool = False
  attention: str = "auto"  # layers.attention_implementation
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = self.encoder["width"]
    p, size = self.image["patch_size"], self.image["image_size"]
    layers.check_patch_grid(size, p)
    if self.head not in HEADS:
      raise ConfigError(f"model.head={self.head!r} is not one of: {', '.join(HEADS)}")
    normal = lambda std, axes: layers.partitioned(nn.initializers.normal(std), axes)
    self.image_stem = ConvStem(self.image["stem"], **kw) if self.image.get("stem", 0) else None
    self.image_patch_embed = nn.Dense(
      width,
      kernel_init=layers.partitioned(nn.initializers.lecun_normal(), ("patch", "embed")),
      **kw,
    )
    self.image_pos_embed = self.param(
      "image_pos_embed",
      normal(0.02, ("length", "embed")),
      ((size // p) ** 2, width),
      self.param_dtype,
    )
    self.text_embed = nn.Embed(
      self.text["vocab_size"], width, embedding_init=normal(0.02, ("vocab", "embed")), **kw
    )
    if self.encoder_text:
      self.encoder_text_pos = self.param(
        "encoder_text_pos",
        normal(0.01, ("length", "embed")),
        (self.text["max_len"], width),
        self.param_dtype,
      )
      self.modality_embed = self.param(
        "modality_embed", normal(0.02, ("classes", "embed")), (2, width), self.param_dtype
      )
    common = dict(
      act=self.act,
      dropout=self.dropout,
      ln_eps=self.ln_eps,
      remat=self.remat,
      scan=self.scan,
      attention=self.attention,
      **kw,
    )
    self.encoder_stack = layers.Encoder(
      **{k: v for k, v in self.encoder.items() if k != "width"}, **common
    )
    self.encoder_ln = layers.layer_norm("encoder_ln", eps=self.ln_eps, **kw)
    self.decoder_pos = self.param(
      "decoder_pos",
      normal(0.01, ("length", "embed")),
      (self.text["max_len"], width),
      self.param_dtype,
    )
    self.decoder_stack = layers.Encoder(
      cross_attention=True, use_bias=self.decoder_bias, **self.decoder, **common
    )
    self.decoder_ln = layers.layer_norm("decoder_ln", eps=self.ln_eps, **kw)
    if self.head == "untied":
      zeros = lambda axes: layers.partitioned(nn.initializers.zeros, axes)
      self.decoder_head = nn.Dense(
        self.text["vocab_size"],
        kernel_init=zeros(("embed", "vocab")),
        bias_init=zeros(("vocab",)),
        **kw,
      )
    self.decode_state = layers.DecodeState()
    self.stash = Stash()

  # --- pieces --------------------------------------------------------------------------------------

  def _valid(self, tokens):
    return token_valid(tokens, self.text.get("pad_id", 0))

  def _image(self, images, train):
    x = images.astype(self.dtype)
    if self.image_stem is not None:
      x = self.image_stem(x)
    p = self.image["patch_size"]
    patches = einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)", p=p, q=p)
    del train
    position = self.image_pos_embed + (self.modality_embed[0] if self.encoder_text else 0.0)
    return self.image_patch_embed(patches) + position.astype(self.dtype)

  def _encode(self, image_tokens, image_valid, prefix, prefix_valid, train):
    """[image; prefix] bidirectionally -> (encoded [b, n + L, w], valid [b, n + L]); the image alone when
    the encoder reads no text (`encoder_text=False`)."""
    if not self.encoder_text:
      x = self.encoder_stack(
        image_tokens, layers.attention_mask(image_valid, image_valid, False), not train
      )
      return self.encoder_ln(x), image_valid
    length = prefix.shape[1]
    text = self.text_embed(prefix) + (
      self.encoder_text_pos[:length] + self.modality_embed[1]
    ).astype(self.dtype)
    x = jnp.concatenate([image_tokens, text], axis=1)
    valid = jnp.concatenate([image_valid, prefix_valid], axis=1)
    x = self.encoder_stack(x, layers.attention_mask(jnp.ones_like(valid), valid, False), not train)
    return self.encoder_ln(x), valid

  def _decode(self, tokens, positions, mask, encoded, encoded_valid, train, decode=False):
    x = self.text_embed(tokens) + jnp.take(
      self.decoder_pos, jnp.clip(positions, 0, self.text["max_len"] - 1), axis=0
    ).astype(self.dtype)
    x = self.decoder_stack(
      x,
      mask,
      not train,
      context=encoded,
      decode=decode,
      context_mask=encoded_valid[:, None, None, :],
    )
    x = self.decoder_ln(x)
    logits = self.decoder_head(x) if self.head == "untied" else self.text_embed.attend(x)
    return layers.mask_padded_vocab(logits, self.text.get("vocab_used"))

  # --- training ------------------------------------------------------------------------------------

  def lm_logits(self, images, request: LMRequest, train: bool = False):
    """Logits [batch, length, vocab] aligned with the request's tokens (position t predicts
    tokens[:, t + 1]) for every t >= prefix_len - 1: the encoder reads the image and
    tokens[:, :prefix_len], the decoder starts at the last prefix token and continues the text; a
    parallel row's decoder reads the mask token everywhere and attends to every position."""
    tokens, prefix_len = request.tokens, request.prefix_len
    b, length = tokens.shape
    pos = jnp.arange(length)[None, :]
    image = self._image(images, train)
    image_valid = jnp.full(image.shape[:2], not request.text_only)
    prefix_valid = (pos < prefix_len[:, None]) & self._valid(tokens)
    encoded, valid = self._encode(image, image_valid, tokens, prefix_valid, train)
    # The decoder reads tokens[p - 1:], each row shifted to start at its last prefix token.
    source = jnp.clip(pos + prefix_len[:, None] - 1, 0, length - 1)
    outside = pos + prefix_len[:, None] - 1 >= length
    shift = lambda x, fill: jnp.where(outside, fill, jnp.take_along_axis(x, source, axis=1))
    inputs = self.decoder_inputs(request)
    dec_valid = shift(inputs.valid, False)
    mask = layers.attention_mask(jnp.ones_like(dec_valid), dec_valid, True)
    if inputs.bidirectional is not None:
      mask = jnp.where(inputs.bidirectional[:, None, None, None], True, mask)
    logits = self._decode(
      shift(inputs.tokens, self.text.get("pad_id", 0)),
      jnp.broadcast_to(pos, (b, length)),
      mask,
      encoded,
      valid,
      train,
    )
    # Back to the positions of `tokens`: t -> decoder step t - p + 1.
    back = jnp.clip(pos - prefix_len[:, None] + 1, 0, length - 1)
    return jnp.take_along_axis(logits, back[..., None], axis=1)

  def encode_image(self, images, train: bool = False):
    """The encoder's outputs at the image positions (no text), mean-pooled and L2-normalised: the image
    features a linear probe reads (CapPa evaluates its encoder this way)."""
    image = self._image(images, train)
    b = image.shape[0]
    encoded, _ = self._encode(
      image,
      jnp.ones(image.shape[:2], bool),
      jnp.zeros((b, 0), jnp.int32),
      jnp.zeros((b, 0), bool),
      train,
    )
    return l2_normalize(encoded.mean(axis=1))

  # --- cached decoding (`vlm_jax.generate`) ----------------------------------------------------------

  def decode_context(self, images):
    return self._image(images, False)

  def decode(self, context, tokens, prefill: bool = False):
    """prefill: encode [image; prompt] and feed the decoder the prompt's last token, as a chunk as long as
    the prompt (the rest padding), so that a cache sized by a full-length call has a slot for every
    later token. Otherwise: continue the decoder."""
    if prefill:
      prompt_valid = self._valid(tokens)
      encoded, valid = self.stash(
        *self._encode(context, jnp.ones(context.shape[:2], bool), tokens, prompt_valid, False)
      )
      last = layers.last_valid(tokens[..., None], prompt_valid)
      tokens = jnp.full_like(tokens, self.text.get("pad_id", 0)).at[:, :1].set(last)
    else:
      encoded, valid = self.stash()
    token_valid = self._valid(tokens)
    positions, mask = self.decode_state(
      token_valid, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    )
    logits = self._decode(tokens, positions, mask, encoded, valid, False, decode=True)
    return logits[:, 0] if prefill else logits

  def __call__(self, images, tokens, train: bool = False, requests=None):
    """Captioning logits, plus `lm/<key>` logits for each `LMRequest` (`vlm_jax.requests`)."""
    lm = lambda request: self.lm_logits(images, request, train)
    return {"caption_logits": lm(LMRequest.caption(tokens)), **self.lm_outputs(requests, lm)}
