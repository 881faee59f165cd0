"""Export a vlm_jax CLIP, SigLIP, ViLT or FLAVA to a transformers folder (the inverse of `convert/hf.py`), or
a CLIP to open_clip's (the inverse of `convert/openclip.py`).

`export(workdir, "hf_clip" | "hf_siglip", output)` writes config.json and model.safetensors that
`transformers.CLIPModel` / `SiglipModel.from_pretrained(output)` load as they are, the image processor's
preprocessor_config.json (the run's size and normalisation), and the run's tokenizer where transformers
has a class that reads it (CLIP's BPE: vocab.json and merges.txt); otherwise it says so. Every parameter
must find a place: a model the target cannot express (another pooling, a padding mask transformers does
not apply, extra heads) is a one-line error naming what differs, never a silently different model.
`openclip` writes open_clip_config.json and open_clip_model.safetensors, which
`open_clip.create_model("local-dir:DIR")` loads (its tokenizer is CLIP's BPE, so the run must use it).
`import(export(run))` gives back the same parameters bit for bit (tests/test_export.py). `drop` names
parameter groups the user chooses to leave behind (FLAVA's pixel-regression MIM heads, which transformers'
FLAVA, a codebook classifier, cannot express): never done unasked.
"""

import jax
import numpy as np

from vlm_jax import models, storage
from vlm_jax.core import checkpoint
from vlm_jax.data import tokenizers
from vlm_jax.errors import ConfigError
from vlm_jax.models import text as text_lib
from vlm_jax.models import vit

FAMILY = {  # export target -> the model family it writes
  "hf_clip": "clip",
  "hf_siglip": "siglip",
  "openclip": "clip",
  "hf_vilt": "vilt",
  "hf_flava": "flava",
}
TARGETS = tuple(FAMILY)
HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


class _Params:
  """A run's parameters by '/'-joined path, remembering which were taken: one left over is an error."""

  def __init__(self, params):
    # Scanned layers (`blocks`, a leading layer axis) are read as the unrolled ones they are.
    self.flat = checkpoint.unstack_layers(
      {
        "/".join(p.key for p in path): np.asarray(v, np.float32)
        for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
      }
    )
    self.used = set()

  def __call__(self, path):
    if path not in self.flat:
      raise ConfigError(f"the model has no parameter {path!r}, which the export target needs")
    self.used.add(path)
    return self.flat[path]

  def drop(self, group: str):
    """Leaves a top-level parameter group (e.g. 'image_mim_head') out of the export."""
    paths = [k for k in self.flat if k.split("/")[0] == group]
    if not paths:
      raise ConfigError(
        f"--drop {group!r}: the model has no such parameter group; it has "
        + ", ".join(sorted({k.split("/")[0] for k in self.flat}))
      )
    for path in paths:
      del self.flat[path]

  def check_all_used(self, target):
    left = sorted(set(self.flat) - self.used)
    if left:
      raise ConfigError(
        f"{target} has no place for {len(left)} parameters of this model: {', '.join(left[:6])}"
        + (" ..." if len(left) > 6 else "")
      )


def _differs(target: str, what: str, fix: str):
  raise ConfigError(f"{target} cannot express this model: {what}; {fix}")


def _blocks(p, src, dst, depth, out):
  """vlm_jax encoder blocks -> HF CLIP/SigLIP encoder layers (torch [out, in] weights)."""
  for i in range(depth):
    b, h = f"{src}/block_{i}/", f"{dst}.layers.{i}."
    out[h + "layer_norm1.weight"], out[h + "layer_norm1.bias"] = (
      p(b + "ln_1/scale"),
      p(b + "ln_1/bias"),
    )
    out[h + "layer_norm2.weight"], out[h + "layer_norm2.bias"] = (
      p(b + "ln_2/scale"),
      p(b + "ln_2/bias"),
    )
    for name, hf in (("query", "q"), ("key", "k"), ("value", "v")):
      kernel = p(b + f"attn/{name}/kernel")
      out[h + f"self_attn.{hf}_proj.weight"] = kernel.reshape(kernel.shape[0], -1).T
      out[h + f"self_attn.{hf}_proj.bias"] = p(b + f"attn/{name}/bias").reshape(-1)
    kernel = p(b + "attn/out/kernel")
    out[h + "self_attn.out_proj.weight"] = kernel.reshape(-1, kernel.shape[-1]).T
    out[h + "self_attn.out_proj.bias"] = p(b + "attn/out/bias")
    for fc in ("fc1", "fc2"):
      out[h + f"mlp.{fc}.weight"] = p(b + f"mlp/{fc}/kernel").T
      out[h + f"mlp.{fc}.bias"] = p(b + f"mlp/{fc}/bias")


def _patch_weight(kernel, patch: int):
  """Dense kernel over (row, column, channel) patches -> the patchify convolution [width, 3, p, p]."""
  return kernel.reshape(patch, patch, -1, kernel.shape[-1]).transpose(3, 2, 0, 1)


def _towers(config, vocab_size):
  image, txt = models.tower_fields(config.model, vocab_size)
  image.setdefault("ln_eps", vit.VisionTransformer.ln_eps)
  txt.setdefault("ln_eps", text_lib.TextTransformer.ln_eps)
  for name, tower in (("image", image), ("text", txt)):
    if tower["act"] not in HF_ACT:
      _differs(
        "transformers",
        f"the {name} tower's activation {tower['act']!r}",
        "use one of " + ", ".join(HF_ACT),
      )
  return image, txt


def _encoder_config(tower, **extra):
  return dict(
    hidden_size=tower["width"],
    intermediate_size=tower["mlp_dim"],
    num_hidden_layers=tower["depth"],
    num_attention_heads=tower["num_heads"],
    hidden_act=HF_ACT[tower["act"]],
    layer_norm_eps=tower["ln_eps"],
    **extra,
  )


def _clip(p, config, tokenizer):
  image, txt = _towers(config, tokenizer.vocab_size)
  m = config.model
  if not txt.get("causal") or txt["pool"] not in ("eot", "argmax"):
    _differs(
      "hf_clip",
      f"text pool {txt['pool']!r} (causal={txt.get('causal')})",
      "CLIP's text tower is causal and pools at its end-of-text token",
    )
  if image["pool"] != "cls" or not image.get("ln_pre", True) or image.get("patch_bias"):
    _differs(
      "hf_clip",
      "the image tower is not CLIP's (class-token pooling, ln_pre, no patch bias)",
      "export as the family it is",
    )
  eos = tokenizer.eos_id
  if txt["pool"] == "eot" and txt.get("eos_id", -1) not in (-1, eos):
    _differs(
      "hf_clip",
      f"text pooled at id {txt['eos_id']}, not the tokenizer's end {eos}",
      "pool at the end-of-text token",
    )
  vocab = txt["vocab_used"]
  out = {
    "text_model.embeddings.token_embedding.weight": p("text_encoder/token_embed/embedding")[:vocab],
    "text_model.embeddings.position_embedding.weight": p("text_encoder/pos_embed"),
    "text_model.final_layer_norm.weight": p("text_encoder/ln_final/scale"),
    "text_model.final_layer_norm.bias": p("text_encoder/ln_final/bias"),
    "vision_model.embeddings.class_embedding": p("image_encoder/cls_token"),
    "vision_model.embeddings.patch_embedding.weight": _patch_weight(
      p("image_encoder/patch_embed/kernel"), image["patch_size"]
    ),
    "vision_model.embeddings.position_embedding.weight": p("image_encoder/pos_embed"),
    "vision_model.pre_layrnorm.weight": p("image_encoder/ln_pre/scale"),
    "vision_model.pre_layrnorm.bias": p("image_encoder/ln_pre/bias"),
    "vision_model.post_layernorm.weight": p("image_encoder/ln_post/scale"),
    "vision_model.post_layernorm.bias": p("image_encoder/ln_post/bias"),
    "visual_projection.weight": p("image_proj/kernel").T,
    "text_projection.weight": p("text_proj/kernel").T,
    "logit_scale": p("logit_scale").reshape(()),
  }
  _blocks(p, "text_encoder/encoder", "text_model.encoder", txt["depth"], out)
  _blocks(p, "image_encoder/encoder", "vision_model.encoder", image["depth"], out)
  hf_config = dict(
    architectures=["CLIPModel"],
    model_type="clip",
    projection_dim=m.embed_dim,
    logit_scale_init_value=float(m.get("logit_scale_init", 2.6592)),
    text_config=_encoder_config(
      txt,
      vocab_size=vocab,
      max_position_embeddings=txt["max_len"],
      # transformers pools at the first eos_token_id (argmax of the ids when it is 2, its legacy value).
      eos_token_id=eos,
      bos_token_id=tokenizer.bos_id,
      pad_token_id=max(tokenizer.pad_id, 0),
      projection_dim=m.embed_dim,
    ),
    vision_config=_encoder_config(
      image,
      image_size=image["image_size"],
      patch_size=image["patch_size"],
      projection_dim=m.embed_dim,
    ),
  )
  return out, hf_config


def _siglip(p, config, tokenizer):
  image, txt = _towers(config, tokenizer.vocab_size)
  if txt.get("causal") or txt["pool"] != "last":
    _differs(
      "hf_siglip",
      f"text pool {txt['pool']!r} (causal={txt.get('causal')})",
      "SigLIP's text tower is bidirectional and reads its last position",
    )
  if txt.get("pad_id", 0) >= 0:
    _differs(
      "hf_siglip",
      f"the text tower masks padding (model.text.pad_id={txt.get('pad_id', 0)}), which SiglipModel does not",
      "train with --config.model.text.pad_id=-1",
    )
  if image["pool"] != "map" or image.get("ln_pre", True) or not image.get("patch_bias"):
    _differs(
      "hf_siglip",
      "the image tower is not SigLIP's (MAP head, no ln_pre, patch bias)",
      "export as the family it is",
    )
  d = image["width"]
  vocab = txt["vocab_used"]
  h = "vision_model.head."
  mh = "image_encoder/map_head/"
  out = {
    "text_model.embeddings.token_embedding.weight": p("text_encoder/token_embed/embedding")[:vocab],
    "text_model.embeddings.position_embedding.weight": p("text_encoder/pos_embed"),
    "text_model.final_layer_norm.weight": p("text_encoder/ln_final/scale"),
    "text_model.final_layer_norm.bias": p("text_encoder/ln_final/bias"),
    "text_model.head.weight": p("text_proj/kernel").T,
    "text_model.head.bias": p("text_proj/bias"),
    "vision_model.embeddings.patch_embedding.weight": _patch_weight(
      p("image_encoder/patch_embed/kernel"), image["patch_size"]
    ),
    "vision_model.embeddings.patch_embedding.bias": p("image_encoder/patch_embed/bias"),
    "vision_model.embeddings.position_embedding.weight": p("image_encoder/pos_embed"),
    "vision_model.post_layernorm.weight": p("image_encoder/ln_post/scale"),
    "vision_model.post_layernorm.bias": p("image_encoder/ln_post/bias"),
    h + "probe": p(mh + "probe").reshape(1, 1, d),
    h + "attention.in_proj_weight": np.concatenate(
      [p(mh + f"attn/{n}/kernel").reshape(d, -1).T for n in ("query", "key", "value")]
    ),
    h + "attention.in_proj_bias": np.concatenate(
      [p(mh + f"attn/{n}/bias").reshape(-1) for n in ("query", "key", "value")]
    ),
    h + "attention.out_proj.weight": p(mh + "attn/out/kernel").reshape(-1, d).T,
    h + "attention.out_proj.bias": p(mh + "attn/out/bias"),
    h + "layernorm.weight": p(mh + "ln/scale"),
    h + "layernorm.bias": p(mh + "ln/bias"),
    h + "mlp.fc1.weight": p(mh + "mlp/fc1/kernel").T,
    h + "mlp.fc1.bias": p(mh + "mlp/fc1/bias"),
    h + "mlp.fc2.weight": p(mh + "mlp/fc2/kernel").T,
    h + "mlp.fc2.bias": p(mh + "mlp/fc2/bias"),
    "logit_scale": p("logit_scale").reshape(1),
    "logit_bias": p("logit_bias").reshape(1),
  }
  _blocks(p, "text_encoder/encoder", "text_model.encoder", txt["depth"], out)
  _blocks(p, "image_encoder/encoder", "vision_model.encoder", image["depth"], out)
  hf_config = dict(
    architectures=["SiglipModel"],
    model_type="siglip",
    text_config=_encoder_config(
      txt,
      vocab_size=vocab,
      max_position_embeddings=txt["max_len"],
      projection_size=config.model.embed_dim,
      pad_token_id=max(tokenizer.pad_id, 0),
      eos_token_id=tokenizer.eos_id,
      bos_token_id=tokenizer.bos_id
      if tokenizer.bos_id is not None and tokenizer.bos_id >= 0
      else None,
    ),
    vision_config=_encoder_config(
      image, image_size=image["image_size"], patch_size=image["patch_size"]
    ),
  )
  return out, hf_config


def _tokenizer_files(tokenizer, output: str, max_len: int, log) -> list:
  """The run's tokenizer in a form transformers reads, where it has a class for it."""
  if isinstance(tokenizer, tokenizers.ClipBpeTokenizer):
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    storage.write_json(storage.join(output, "vocab.json"), tokenizer.encoder)
    storage.write_text(
      storage.join(output, "merges.txt"),
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
    )
    storage.write_json(
      storage.join(output, "tokenizer_config.json"),
      # transformers pads with the end-of-text token where open_clip pads with id 0 ('!'): the text
      # tower is causal and pools at the first end-of-text token, so the embeddings are the same.
      {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_len,
        "pad_token": "<|endoftext|>",
      },
    )
    return ["vocab.json", "merges.txt", "tokenizer_config.json"]
  if isinstance(tokenizer, tokenizers.SiglipTokenizer):  # SigLIP's SentencePiece model, as it is
    storage.write_bytes(storage.join(output, "spiece.model"), storage.read_bytes(tokenizer.path))
    storage.write_json(
      storage.join(output, "tokenizer_config.json"),
      {"tokenizer_class": "SiglipTokenizer", "do_lower_case": True, "model_max_length": max_len},
    )
    return ["spiece.model", "tokenizer_config.json"]
  if isinstance(tokenizer, tokenizers.WordPieceTokenizer):  # BERT's uncased WordPiece (ViLT, FLAVA)
    lines = [tokenizer.inverse.get(i, f"[unused_{i}]") for i in range(tokenizer.vocab_size)]
    storage.write_text(storage.join(output, "vocab.txt"), "".join(f"{t}\n" for t in lines))
    storage.write_json(
      storage.join(output, "tokenizer_config.json"),
      {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": max_len},
    )
    return ["vocab.txt", "tokenizer_config.json"]
  log(
    f"note: transformers has no tokenizer class for this run's {type(tokenizer).__name__}; the model is "
    "exported without one (tokenize with vlm_jax, or train with data.tokenizer=clip_bpe)"
  )
  return []


def _openclip(p, config, tokenizer):
  """open_clip's CLIP (OpenAI's state-dict layout) and its `open_clip_config.json`."""
  image, txt = _towers(config, tokenizer.vocab_size)
  if not txt.get("causal") or txt["pool"] not in ("eot", "argmax"):
    _differs(
      "openclip",
      f"text pool {txt['pool']!r} (causal={txt.get('causal')})",
      "CLIP's text tower is causal and pools at its end-of-text token",
    )
  if tokenizer.eos_id != txt["vocab_used"] - 1:
    _differs(
      "openclip",
      f"open_clip pools at the largest token id, and this run's end-of-text id {tokenizer.eos_id} "
      f"is not its largest ({txt['vocab_used'] - 1})",
      "train with data.tokenizer=clip_bpe",
    )
  if image["pool"] != "cls" or not image.get("ln_pre", True) or image.get("patch_bias"):
    _differs(
      "openclip",
      "the image tower is not CLIP's (class-token pooling, ln_pre, no patch bias)",
      "export as the family it is",
    )
  if image["act"] != txt["act"] or image["act"] not in ("gelu", "quick_gelu"):
    _differs(
      "openclip",
      f"activations {image['act']!r} / {txt['act']!r}",
      "open_clip's towers share gelu or quick_gelu",
    )
  out = {
    "token_embedding.weight": p("text_encoder/token_embed/embedding")[: txt["vocab_used"]],
    "positional_embedding": p("text_encoder/pos_embed"),
    "ln_final.weight": p("text_encoder/ln_final/scale"),
    "ln_final.bias": p("text_encoder/ln_final/bias"),
    "text_projection": p("text_proj/kernel"),
    "logit_scale": p("logit_scale").reshape(()),
    "visual.conv1.weight": _patch_weight(
      p("image_encoder/patch_embed/kernel"), image["patch_size"]
    ),
    "visual.class_embedding": p("image_encoder/cls_token"),
    "visual.positional_embedding": p("image_encoder/pos_embed"),
    "visual.ln_pre.weight": p("image_encoder/ln_pre/scale"),
    "visual.ln_pre.bias": p("image_encoder/ln_pre/bias"),
    "visual.ln_post.weight": p("image_encoder/ln_post/scale"),
    "visual.ln_post.bias": p("image_encoder/ln_post/bias"),
    "visual.proj": p("image_proj/kernel"),
  }
  for src, dst, depth in (
    ("text_encoder/encoder", "transformer.resblocks", txt["depth"]),
    ("image_encoder/encoder", "visual.transformer.resblocks", image["depth"]),
  ):
    hf = {}
    _blocks(p, src, "x", depth, hf)
    for i in range(depth):
      g = lambda name: hf[f"x.layers.{i}.{name}"]  # noqa: B023  (called within this iteration)
      b = f"{dst}.{i}."
      out[b + "ln_1.weight"], out[b + "ln_1.bias"] = g("layer_norm1.weight"), g("layer_norm1.bias")
      out[b + "ln_2.weight"], out[b + "ln_2.bias"] = g("layer_norm2.weight"), g("layer_norm2.bias")
      out[b + "attn.in_proj_weight"] = np.concatenate(
        [g(f"self_attn.{n}_proj.weight") for n in "qkv"]
      )
      out[b + "attn.in_proj_bias"] = np.concatenate([g(f"self_attn.{n}_proj.bias") for n in "qkv"])
      out[b + "attn.out_proj.weight"] = g("self_attn.out_proj.weight")
      out[b + "attn.out_proj.bias"] = g("self_attn.out_proj.bias")
      out[b + "mlp.c_fc.weight"], out[b + "mlp.c_fc.bias"] = g("mlp.fc1.weight"), g("mlp.fc1.bias")
      out[b + "mlp.c_proj.weight"], out[b + "mlp.c_proj.bias"] = (
        g("mlp.fc2.weight"),
        g("mlp.fc2.bias"),
      )
  model_cfg = dict(
    embed_dim=config.model.embed_dim,
    quick_gelu=image["act"] == "quick_gelu",
    vision_cfg=dict(
      image_size=image["image_size"],
      layers=image["depth"],
      width=image["width"],
      head_width=image["width"] // image["num_heads"],
      mlp_ratio=image["mlp_dim"] / image["width"],
      patch_size=image["patch_size"],
    ),
    text_cfg=dict(
      context_length=txt["max_len"],
      vocab_size=txt["vocab_used"],
      width=txt["width"],
      heads=txt["num_heads"],
      layers=txt["depth"],
      mlp_ratio=txt["mlp_dim"] / txt["width"],
    ),
  )
  preprocess_cfg = dict(
    size=image["image_size"],
    mean=list(config.data.mean),
    std=list(config.data.std),
    interpolation="bicubic",
    resize_mode="shortest",
  )
  return out, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def _bert_layers(p, src, dst, depth, out):
  """vlm_jax encoder blocks -> HF's ViT/BERT-style layers (`{dst}.{i}.attention.attention.query`, ...), as
  ViLT and FLAVA name them."""
  hf = {}
  _blocks(p, src, "x", depth, hf)
  for i in range(depth):
    for ours, theirs in (
      ("layer_norm1", "layernorm_before"),
      ("layer_norm2", "layernorm_after"),
      ("self_attn.q_proj", "attention.attention.query"),
      ("self_attn.k_proj", "attention.attention.key"),
      ("self_attn.v_proj", "attention.attention.value"),
      ("self_attn.out_proj", "attention.output.dense"),
      ("mlp.fc1", "intermediate.dense"),
      ("mlp.fc2", "output.dense"),
    ):
      for kind in ("weight", "bias"):
        out[f"{dst}.{i}.{theirs}.{kind}"] = hf[f"x.layers.{i}.{ours}.{kind}"]


def _vilt(p, model, tokenizer):
  """vlm_jax's ViLT (models/fusion.py, HF's layout) -> HF ViLT: `vilt.*`, the MLM head (`mlm_score`, whose
  decoder is the word embeddings) and the retrieval head (`rank_output`), so that the folder loads as
  `ViltForMaskedLM` and as `ViltForImageAndTextRetrieval`. The 2-way ITM head (not matching, matching)
  becomes the one logit r = l1 - l0 that gives the same matching probability; the text position table
  already holds HF's token-type row 0, which is exported as zeros."""
  if model.act not in HF_ACT:
    _differs("hf_vilt", f"activation {model.act!r}", "use one of " + ", ".join(HF_ACT))
  d, vocab = model.width, model.vocab_used or tokenizer.vocab_size
  words = p("text_embed/embedding")[:vocab]
  v, t = "vilt.embeddings.", "vilt.embeddings.text_embeddings."
  out = {
    t + "word_embeddings.weight": words,
    t + "position_embeddings.weight": p("text_pos_embed"),
    t + "token_type_embeddings.weight": np.zeros((2, d), np.float32),
    t + "LayerNorm.weight": p("text_ln/scale"),
    t + "LayerNorm.bias": p("text_ln/bias"),
    v + "patch_embeddings.projection.weight": _patch_weight(
      p("patch_embed/kernel"), model.patch_size
    ),
    v + "patch_embeddings.projection.bias": p("patch_embed/bias"),
    v + "cls_token": p("image_cls").reshape(1, 1, d),
    v + "position_embeddings": p("image_pos_embed")[None],
    v + "token_type_embeddings.weight": p("modality_embed"),
    "vilt.layernorm.weight": p("final_ln/scale"),
    "vilt.layernorm.bias": p("final_ln/bias"),
    "vilt.pooler.dense.weight": p("pooler/kernel").T,
    "vilt.pooler.dense.bias": p("pooler/bias"),
    "mlm_score.transform.dense.weight": p("mlm_transform/kernel").T,
    "mlm_score.transform.dense.bias": p("mlm_transform/bias"),
    "mlm_score.transform.LayerNorm.weight": p("mlm_ln/scale"),
    "mlm_score.transform.LayerNorm.bias": p("mlm_ln/bias"),
    "mlm_score.decoder.weight": words,
    "mlm_score.decoder.bias": p("mlm_bias")[:vocab],
  }
  kernel, bias = p("itm_head/kernel"), p("itm_head/bias")
  out["rank_output.weight"] = (kernel[:, 1] - kernel[:, 0])[None]
  out["rank_output.bias"] = (bias[1] - bias[0]).reshape(1)
  _bert_layers(p, "encoder", "vilt.encoder.layer", model.depth, out)
  config = dict(
    architectures=["ViltForMaskedLM"],
    model_type="vilt",
    vocab_size=vocab,
    type_vocab_size=2,
    modality_type_vocab_size=2,
    max_position_embeddings=model.max_len,
    hidden_size=d,
    num_hidden_layers=model.depth,
    num_attention_heads=model.num_heads,
    intermediate_size=model.mlp_dim,
    hidden_act=HF_ACT[model.act],
    layer_norm_eps=model.ln_eps,
    image_size=model.image_size,
    patch_size=model.patch_size,
    num_channels=3,
    qkv_bias=True,
    max_image_length=-1,
    pad_token_id=max(tokenizer.pad_id, 0),
  )
  return out, config


def _flava_head(p, src, dst, outputs, out) -> bool:
  """A FLAVA prediction head {transform, ln, decoder} -> HF's (`bias` is tied to `decoder.bias`); its first
  `outputs` columns (the rest pad the vocabulary). False when the head was dropped."""
  if f"{src}/decoder/kernel" not in p.flat:
    return False
  out[dst + "transform.dense.weight"] = p(src + "/transform/kernel").T
  out[dst + "transform.dense.bias"] = p(src + "/transform/bias")
  out[dst + "transform.LayerNorm.weight"] = p(src + "/ln/scale")
  out[dst + "transform.LayerNorm.bias"] = p(src + "/ln/bias")
  out[dst + "decoder.weight"] = p(src + "/decoder/kernel")[:, :outputs].T
  out[dst + "decoder.bias"] = out[dst + "bias"] = p(src + "/decoder/bias")[:outputs]
  return True


def _flava(p, model, tokenizer, log):
  """vlm_jax's FLAVA (models/flava.py) -> HF's `FlavaForPreTraining` (loads as `FlavaModel` too): the
  encoders, projections, multimodal encoder, ITM head and the masked-prediction heads. transformers' FLAVA
  has unimodal poolers no FLAVA output reads (its contrastive embeddings project [CLS] tokens): they are
  written as zeros. The text position table already holds HF's token-type row 0 (convert/hf.py folds it
  in), so the token-type rows are zeros. No DALL-E codebook is written (`init_codebook=False`): transformers'
  MIM loss then needs its labels passed."""
  image, txt, mm = model.image, model.text, dict(model.multimodal)
  mm.setdefault("act", txt.get("act", "gelu"))
  towers = {"image": image, "text": txt, "multimodal": mm}
  for name, tower in towers.items():
    if tower.get("act", "gelu") not in HF_ACT:
      _differs(
        "hf_flava", f"the {name} activation {tower['act']!r}", "use one of " + ", ".join(HF_ACT)
      )
  if image.get("ln_pre") or not image.get("patch_bias", True) or not txt.get("embed_ln", True):
    _differs(
      "hf_flava",
      "the towers are not FLAVA's (an image ln_pre, no patch bias, or no text embedding LayerNorm)",
      "keep FLAVA's model.image / model.text defaults",
    )
  if txt.get("pad_id", 0) < 0:
    _differs(
      "hf_flava",
      "the text tower does not mask padding (model.text.pad_id=-1), which transformers' FLAVA does",
      "train with the tokenizer's pad id",
    )
  codes = model.mim_codes
  if not codes and any(f"{h}/decoder/kernel" in p.flat for h in ("image_mim_head", "mm_mim_head")):
    _differs(
      "hf_flava",
      "its MIM heads regress pixels (model.mim_codes=0), where transformers' heads classify visual codes",
      "train with a codebook (model.mim_codes=K), or export without them: "
      "--drop image_mim_head,mm_mim_head",
    )
  d_mm = mm["width"]
  for head, tower in (("mm_mlm_head", "text"), ("mm_mim_head", "image")):
    if f"{head}/decoder/kernel" in p.flat and towers[tower]["width"] != d_mm:
      _differs(
        "hf_flava",
        f"transformers builds {head} at the {tower} width ({towers[tower]['width']}), "
        f"and this multimodal encoder's is {d_mm}",
        f"use equal widths, or export without it: --drop {head}",
      )
  vocab = txt["vocab_used"]
  f, e, t = "flava.", "flava.image_model.embeddings.", "flava.text_model.embeddings."
  lin = lambda src, dst: {dst + ".weight": p(src + "/kernel").T, dst + ".bias": p(src + "/bias")}
  ln = lambda src, dst: {dst + ".weight": p(src + "/scale"), dst + ".bias": p(src + "/bias")}
  zeros_pooler = lambda d, dst: {
    dst + ".weight": np.zeros((d, d), np.float32),
    dst + ".bias": np.zeros(d, np.float32),
  }
  out = {
    e + "cls_token": p("image_encoder/cls_token").reshape(1, 1, -1),
    e + "mask_token": p("image_encoder/mask_token").reshape(1, 1, -1),
    e + "position_embeddings": p("image_encoder/pos_embed")[None],
    e + "patch_embeddings.projection.weight": _patch_weight(
      p("image_encoder/patch_embed/kernel"), image["patch_size"]
    ),
    e + "patch_embeddings.projection.bias": p("image_encoder/patch_embed/bias"),
    **ln("image_encoder/ln_post", f + "image_model.layernorm"),
    **zeros_pooler(image["width"], f + "image_model.pooler.dense"),
    t + "word_embeddings.weight": p("text_encoder/token_embed/embedding")[:vocab],
    t + "position_embeddings.weight": p("text_encoder/pos_embed"),
    t + "token_type_embeddings.weight": np.zeros((2, txt["width"]), np.float32),
    **ln("text_encoder/ln_embed", t + "LayerNorm"),
    **ln("text_encoder/ln_final", f + "text_model.layernorm"),
    **zeros_pooler(txt["width"], f + "text_model.pooler.dense"),
    **lin("image_proj", f + "image_projection"),
    **lin("text_proj", f + "text_projection"),
    f + "logit_scale": p("logit_scale").reshape(()),
    **lin("image_to_mm", f + "image_to_mm_projection"),
    **lin("text_to_mm", f + "text_to_mm_projection"),
    f + "multimodal_model.cls_token": p("mm_cls").reshape(1, 1, -1),
    **ln("mm_ln", f + "multimodal_model.layernorm"),
    # vlm_jax's one multimodal pooler is both FlavaModel's and the ITM head's.
    **lin("mm_pooler", f + "multimodal_model.pooler.dense"),
  }
  if "itm_head/kernel" in p.flat:
    out.update(lin("mm_pooler", "itm_head.pooler.dense"))
    out.update(lin("itm_head", "itm_head.seq_relationship"))
  _bert_layers(p, "image_encoder/encoder", f + "image_model.encoder.layer", image["depth"], out)
  _bert_layers(p, "text_encoder/encoder", f + "text_model.encoder.layer", txt["depth"], out)
  _bert_layers(p, "mm_encoder", f + "multimodal_model.encoder.layer", mm["depth"], out)
  written = [
    name
    for name, src, n in (
      ("mlm_head", "text_mlm_head", vocab),
      ("mmm_text_head", "mm_mlm_head", vocab),
      ("mim_head", "image_mim_head", codes),
      ("mmm_image_head", "mm_mim_head", codes),
    )
    if _flava_head(p, src, name + ".", n, out)
  ]
  left = sorted({"mlm_head", "mmm_text_head", "mim_head", "mmm_image_head"} - set(written))
  if left or "itm_head/kernel" not in p.flat:
    log(
      "note: exported without "
      + ", ".join(left + ([] if "itm_head/kernel" in p.flat else ["itm_head"]))
      + "; FlavaForPreTraining initialises them anew (FlavaModel has none)"
    )
  tower = lambda c, **extra: _encoder_config(
    {"ln_eps": 1e-5, "act": txt.get("act", "gelu"), **c}, qkv_bias=True, **extra
  )
  config = dict(
    architectures=["FlavaForPreTraining"],
    model_type="flava",
    hidden_size=d_mm,
    projection_dim=model.embed_dim,
    logit_scale_init_value=float(model.logit_scale_init),
    init_codebook=False,
    image_config=tower(
      image,
      image_size=image["image_size"],
      patch_size=image["patch_size"],
      num_channels=3,
      mask_token=True,
      vocab_size=codes or 8192,  # transformers' default; unused when the MIM heads are dropped
    ),
    text_config=tower(
      txt,
      vocab_size=vocab,
      type_vocab_size=2,
      max_position_embeddings=txt["max_len"],
      pad_token_id=max(tokenizer.pad_id, 0),
    ),
    multimodal_config=tower(mm, use_cls_token=True),
  )
  return out, config


def _save(tensors: dict, path: str):
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel

  tensors = {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}  # 0-d stays 0-d
  storage.write_bytes(path, save(tensors, metadata={"format": "pt"}))


def _hf_processor(target, config):
  size = config.model.image.image_size
  processor = (
    {"image_processor_type": "SiglipImageProcessor", "size": {"height": size, "width": size}}
    if target == "hf_siglip"
    else {  # vlm_jax's evaluation preprocessing: the shorter side to `size`, then a centre crop
      "image_processor_type": {"hf_clip": "CLIPImageProcessor", "hf_flava": "FlavaImageProcessor"}[
        target
      ],
      "size": {"shortest_edge": size},
      "crop_size": {"height": size, "width": size},
      "do_center_crop": True,
    }
  )
  return {
    **processor,
    "do_resize": True,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": list(config.data.mean),
    "image_std": list(config.data.std),
  }


def export(
  workdir, target: str, output: str, *, step: int | None = None, drop=(), log=print
) -> dict:
  """Writes a run's checkpoint (default: the latest) to `output` in `target`'s format; returns the
  config written (transformers' config.json, or open_clip's open_clip_config.json). `workdir`: a run's
  (or converted model's) workdir, or a model `vlm_jax.load` gave. `drop`: top-level parameter groups to
  leave out (e.g. FLAVA's pixel MIM heads), each said in the log."""
  from vlm_jax import inference  # pylint: disable=import-outside-toplevel

  if target not in TARGETS:
    raise ConfigError(f"unknown export target {target!r}; known: {', '.join(TARGETS)}")
  m = workdir if isinstance(workdir, inference.Pretrained) else inference.load(workdir, step)
  workdir = workdir if isinstance(workdir, str) else "the loaded model"
  if m.config.model.name != FAMILY[target]:
    raise ConfigError(
      f"{workdir} holds a {m.config.model.name!r} model; --to {target} exports "
      f"{FAMILY[target]!r} models"
    )
  p = _Params(m.params)
  for group in drop:
    p.drop(group)
  if target == "hf_vilt":
    state, written_config = _vilt(p, m.model, m.tokenizer)
  elif target == "hf_flava":
    state, written_config = _flava(p, m.model, m.tokenizer, log)
  else:
    build = {"hf_clip": _clip, "hf_siglip": _siglip, "openclip": _openclip}[target]
    state, written_config = build(p, m.config, m.tokenizer)
  p.check_all_used(target)
  output = storage.resolve(output)
  storage.makedirs(output)
  if target == "openclip":
    files = ["open_clip_config.json", "open_clip_model.safetensors"]
    _save(state, storage.join(output, files[1]))
    storage.write_json(storage.join(output, files[0]), written_config)
  else:
    files = ["config.json", "model.safetensors", "preprocessor_config.json"]
    _save(state, storage.join(output, files[1]))
    storage.write_json(storage.join(output, files[0]), written_config)
    if target != "hf_vilt":  # ViLT's processor resizes to its own sizes; vlm_jax's are the model's
      storage.write_json(storage.join(output, files[2]), _hf_processor(target, m.config))
    else:
      files.pop()
    files += _tokenizer_files(m.tokenizer, output, m.max_len, log)
  log(f"Wrote step {m.step} of {workdir} as {target} to {output}: {', '.join(files)}")
  return written_config
