"""What every model that serves `lm/*` requests (SimVLM, CapPa's encoder-decoder, the decoder-only
prefix-LM) shares: the methods built on its one `lm_logits(images, LMRequest, train)`.

A model mixes `ServesLM` in and defines `lm_logits` and `text` (its text config); prefix-LM scoring,
captioning, and the `lm/<key>` outputs of a forward pass then come from here, so a new objective of the
CapPa kind (a new way to draw an `LMRequest`) needs no model edit.
"""

from vlm_jax import requests as requests_lib
from vlm_jax.models import text


class ServesLM:
  """Mixin for flax modules with `lm_logits(images, request: LMRequest, train, ...)` and a `text` dict."""

  def prefix_lm_logits(
    self,
    images,
    tokens,
    prefix_len,
    train: bool = False,
    text_only: bool = False,
    inputs=None,
    parallel=None,
  ):
    """`lm_logits` of `LMRequest(tokens, prefix_len, inputs, parallel, text_only)`: logits [batch, length,
    vocab] aligned with `tokens` (position t predicts tokens[:, t + 1] for every t >= prefix_len - 1)."""
    request = requests_lib.LMRequest(tokens, prefix_len, inputs, parallel, text_only)
    return self.lm_logits(images, request, train)

  def caption_logits(self, images, tokens, train: bool = False):
    """Captioning: only the start token joins the image in the prefix."""
    return self.lm_logits(images, requests_lib.LMRequest.caption(tokens), train)

  def lm_outputs(self, requests, lm_logits) -> dict:
    """{`lm/<key>`: lm_logits(request)} for each `lm/*` request of a forward pass."""
    return {name: lm_logits(r) for name, r in requests_lib.lm_requests(requests).items()}

  def decoder_inputs(self, request) -> requests_lib.DecoderInputs:
    """The request's decoder inputs with this model's padding and mask token."""
    mask_id = text.mask_token_id(self.text) if request.parallel is not None else None
    return requests_lib.decoder_inputs(
      request, pad_id=self.text.get("pad_id", 0), mask_token_id=mask_id
    )
