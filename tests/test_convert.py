"""Importing HF CLIP / SigLIP and OpenAI-layout CLIP weights: same embeddings and logits as transformers."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import helpers
from tests.hf_models import (
  make_hf_clip,
  make_hf_flava,
  make_hf_siglip,
  make_hf_vilt,
  openai_state_dict,
)
from tests.test_tokenizers import SENTENCES
import vlm_jax
from vlm_jax import convert
from vlm_jax.errors import ConfigError
from vlm_jax.objectives.base import token_cross_entropy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def reference_outputs(model, pixels, ids):
  with torch.no_grad():
    out = model(
      input_ids=torch.from_numpy(ids.astype(np.int64)),
      pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
    )
  return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def check_parity(workdir, model, bias=False):
  m = vlm_jax.load(str(workdir))
  pixels = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype(np.float32)
  ids = m.tokenize(SENTENCES)
  image_ref, text_ref, logits_ref = reference_outputs(model, pixels, ids)
  image, text = m.encode_image(pixels), m.encode_text(ids)
  np.testing.assert_allclose(image, image_ref, atol=1e-4)
  np.testing.assert_allclose(text, text_ref, atol=1e-4)
  # m.similarity: the model's calibrated logits (its scale, and SigLIP's bias) and probabilities (a
  # softmax over the texts for CLIP, each pair's sigmoid for SigLIP), as transformers gives them.
  logits = m.similarity(pixels, ids)
  np.testing.assert_allclose(logits, logits_ref, atol=1e-4 * max(1.0, np.abs(logits_ref).max()))
  probs_ref = (
    torch.sigmoid(torch.from_numpy(logits_ref))
    if bias
    else torch.softmax(torch.from_numpy(logits_ref), dim=1)
  ).numpy()
  np.testing.assert_allclose(m.similarity(pixels, ids, probabilities=True), probs_ref, atol=1e-5)
  return m


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hf_clip")
  return folder, make_hf_clip(str(folder))


def test_hf_clip_parity_and_eval_of_the_converted_workdir(hf_clip, tmp_path):
  folder, model = hf_clip
  convert.convert("hf_clip", str(folder), str(tmp_path / "w"))
  m = check_parity(tmp_path / "w", model)
  # The image preprocessing is the run's eval preprocessing: a uint8 image becomes the model's input size.
  pixels = m.preprocess(np.zeros((64, 48, 3), np.uint8))
  assert pixels.shape == (1, 32, 32, 3)
  # `main --mode=eval` evaluates the converted workdir with its own config.json.
  result = subprocess.run(
    [sys.executable, "-m", "vlm_jax.main", "--mode=eval", "--workdir", str(tmp_path / "w")],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr
  records = list((tmp_path / "w" / "eval_records" / "step_0").rglob("*.json"))
  assert "zero_shot.json" in [r.name for r in records], records
  assert "eval/zero_shot/shape_top1" in result.stdout


def test_hf_siglip_parity_via_the_command_line(tmp_path):
  folder = tmp_path / "hf_siglip"
  folder.mkdir()
  model = make_hf_siglip(str(folder))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "vlm_jax.convert",
      "--from",
      "hf_siglip",
      "--input",
      str(folder),
      "--output",
      str(tmp_path / "w"),
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 0, result.stderr
  check_parity(tmp_path / "w", model, bias=True)


def test_a_converted_model_without_its_vocabulary_loads_and_encodes_images(hf_clip, tmp_path):
  folder, model = hf_clip
  bare = tmp_path / "no_vocab"
  bare.mkdir()
  for name in os.listdir(folder):
    if name not in ("vocab.json", "merges.txt"):
      shutil.copy(folder / name, bare / name)
  logs = []
  convert.convert("hf_clip", str(bare), str(tmp_path / "w"), log=logs.append)
  assert any("no tokenizer vocabulary found" in line for line in logs), logs
  m = vlm_jax.load(str(tmp_path / "w"))
  pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  image_ref, _, _ = reference_outputs(model, pixels, np.zeros((2, 16), np.int32) + 1)
  np.testing.assert_allclose(m.encode_image(pixels), image_ref, atol=1e-4)
  with pytest.raises(ConfigError, match="no vocabulary .*data.tokenizer_path.*--tokenizer"):
    m.tokenize("a red circle")


def test_openclip_state_dict_parity(hf_clip, tmp_path):
  folder, model = hf_clip
  path = tmp_path / "ViT-micro.pt"
  torch.save({"state_dict": {"module." + k: v for k, v in openai_state_dict(model).items()}}, path)
  convert.convert(
    "openclip",
    str(path),
    str(tmp_path / "w"),
    tokenizer_path=str(folder / "bpe_simple_vocab.txt.gz"),
    image_heads=2,
    text_heads=2,
  )
  check_parity(tmp_path / "w", model)


def test_mismatched_checkpoints_list_the_parameter_paths(hf_clip, tmp_path):
  folder, model = hf_clip
  state = openai_state_dict(model)
  del state["visual.ln_post.bias"]
  state["text_projection"] = state["text_projection"][:, :16]
  torch.save(state, tmp_path / "broken.pt")
  with pytest.raises(ConfigError) as e:
    convert.load_pretrained(str(tmp_path / "broken.pt"), "openclip", image_heads=2, text_heads=2)
  assert "'visual.ln_post.bias'" in str(e.value)
  # A tensor the converter would leave behind is an error too: nothing is dropped silently.
  state = openai_state_dict(model)
  state["visual.extra_head.weight"] = torch.zeros(3)
  torch.save(state, tmp_path / "extra.pt")
  with pytest.raises(ConfigError, match="visual.extra_head.weight"):
    convert.load_pretrained(str(tmp_path / "extra.pt"), "openclip", image_heads=2, text_heads=2)
  # A wrongly shaped tensor fails the check against the model, by path.
  state = openai_state_dict(model)
  state["text_projection"] = state["text_projection"][:, :16]
  torch.save(state, tmp_path / "narrow.pt")
  with pytest.raises(
    ConfigError, match=r"image_proj/kernel: checkpoint \(64, 32\) vs model \(64, 16\)"
  ):
    convert.load_pretrained(str(tmp_path / "narrow.pt"), "openclip", image_heads=2, text_heads=2)
  # Restoring a checkpoint into a model of another shape lists every offending path.
  convert.convert("hf_clip", str(folder), str(tmp_path / "w"))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "vlm_jax.main",
      "--mode=eval",
      "--workdir",
      str(tmp_path / "w"),
      "--config",
      helpers.TINY,
      *helpers.cli_overrides(**{"model.embed_dim": 48, "model.image.pool": "gap"}),
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=helpers.ROOT,
  )
  assert result.returncode == 2
  for expected in (
    "image_proj/kernel: checkpoint (64, 32) vs model (64, 48)",
    "unexpected: image_encoder/cls_token",
    "image_encoder/pos_embed: checkpoint (17, 64) vs model (16, 64)",
  ):
    assert expected in result.stderr, result.stderr


def _vilt_inputs(ids, pixels):
  """transformers' ViLT keyword inputs for token ids and NHWC pixels (32 px, every pixel real)."""
  return dict(
    input_ids=torch.from_numpy(ids.astype(np.int64)),
    attention_mask=torch.from_numpy((ids != 0) * 1),
    pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
    pixel_mask=torch.ones(len(ids), 32, 32, dtype=torch.int64),
  )


def _check_fill_mask(m, pixels, texts, masked_ids, probs_ref):
  """m.fill_mask gives, at each [MASK], transformers' top tokens and their probabilities."""
  mask_id = m.tokenizer.mask_id
  assert [list(row).count(mask_id) for row in masked_ids] == [t.count("[MASK]") for t in texts]
  # Everything but the masks is tokenized as `tokenize` does it.
  plain = m.tokenize([t.replace("[MASK]", "") for t in texts])
  pad = m.tokenizer.pad_id
  assert [[i for i in row if i not in (mask_id, pad)] for row in masked_ids] == [
    [i for i in row if i != pad] for row in plain
  ]
  fills = m.fill_mask(pixels, texts, top_k=3)
  for row, ref, filled in zip(masked_ids, probs_ref, fills):
    positions = np.flatnonzero(row == mask_id)
    assert len(filled) == len(positions)
    for position, top in zip(positions, filled):
      best = np.argsort(-ref[position])[:3]
      assert [w for w, _ in top] == [m.tokenizer.decode([int(i)]) for i in best]
      np.testing.assert_allclose([p for _, p in top], ref[position][best], atol=1e-5)


def test_hf_vilt_parity(tmp_path):
  folder = tmp_path / "hf_vilt"
  model = make_hf_vilt(folder)
  config, vocab = model.config, model.config.vocab_size
  convert.convert("hf_vilt", str(folder), str(tmp_path / "w"), log=lambda *a: None)
  m = vlm_jax.load(str(tmp_path / "w"))
  pixels = np.random.default_rng(0).normal(size=(len(SENTENCES), 32, 32, 3)).astype(np.float32)
  ids = m.tokenize(SENTENCES)
  with torch.no_grad():
    out = model(
      **_vilt_inputs(ids, pixels),
      output_hidden_states=True,
    )
    pooled_ref = model.vilt(
      **_vilt_inputs(ids, pixels),
    ).pooler_output.numpy()
  variables = {"params": m.params}
  logits = np.asarray(m.model.apply(variables, pixels, ids, method="mlm_logits"))[..., :vocab]
  pooled = np.asarray(m.model.apply(variables, pixels, ids, method="features")["pooled"])
  np.testing.assert_allclose(pooled, pooled_ref, atol=1e-4)
  valid = ids != 0  # HF computes logits at padding positions from masked-out attention rows as well
  np.testing.assert_allclose(
    logits[valid], out.logits.numpy()[valid], atol=1e-4 * max(1.0, np.abs(logits).max())
  )
  # The MLM loss over our padded vocabulary equals transformers' over the real one (the padded columns
  # take no probability mass).
  labels = np.where(valid & (np.arange(ids.shape[1]) % 3 == 1), ids, -100)
  with torch.no_grad():
    ref_loss = model(
      **_vilt_inputs(ids, pixels),
      labels=torch.from_numpy(labels.astype(np.int64)),
    ).loss.item()
  full = m.model.apply(variables, pixels, ids, method="mlm_logits")
  assert full.shape[-1] > vocab  # the table is padded
  loss, _, _ = token_cross_entropy(full, np.maximum(labels, 0), labels >= 0)
  assert float(loss) == pytest.approx(ref_loss, abs=1e-5)
  # m.fill_mask: the MLM head's probabilities at each [MASK], given the image.
  texts = ["a [MASK] circle", "two [MASK] on a [MASK]"]
  masked_ids = m.tokenize_masked(texts)
  with torch.no_grad():
    mlm = model(**_vilt_inputs(masked_ids, pixels[:2])).logits
  _check_fill_mask(m, pixels[:2], texts, masked_ids, torch.softmax(mlm, -1).numpy())
  # The retrieval model's single matching logit r becomes the 2-way ITM head (0, r).
  retrieval = transformers.ViltForImageAndTextRetrieval(config).eval()
  (tmp_path / "hf_vilt_itm").mkdir()
  retrieval.save_pretrained(tmp_path / "hf_vilt_itm")
  _, params = convert.load_pretrained(str(tmp_path / "hf_vilt_itm"), "hf_vilt", log=lambda *a: None)
  with torch.no_grad():
    rank = retrieval(
      **_vilt_inputs(ids, pixels),
    ).logits.numpy()[:, 0]
  itm = np.asarray(m.model.apply({"params": params}, pixels, ids, method="itm_logits"))
  np.testing.assert_allclose(itm[:, 1] - itm[:, 0], rank, atol=1e-4)


def flava_outputs(model, m, pixels, ids, patch_mask, heads=("mim", "mmm_image")):
  """(transformers' FlavaForPreTraining `model`, vlm_jax's FLAVA `m`) outputs on the same inputs:
  contrastive embeddings, ITM, MLM and MMM-text logits over the vocabulary, and the image heads named in
  `heads` (MIM and MMM-image, with `patch_mask`ed patches)."""
  vocab = model.config.text_config.vocab_size
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
  with torch.no_grad():
    inputs = dict(
      input_ids=t(ids.astype(np.int64)),
      attention_mask=t((ids != 0) * 1),
      pixel_values=t(pixels.transpose(0, 3, 1, 2)),
    )
    out = model.flava(**inputs)
    masked = model.flava(**inputs, bool_masked_pos=t(patch_mask))
    norm = torch.nn.functional.normalize
    patches = patch_mask.shape[1]
    ref = {
      "image": norm(model.flava.image_projection(out.image_embeddings[:, 0]), dim=-1),
      "text": norm(model.flava.text_projection(out.text_embeddings[:, 0]), dim=-1),
      "itm": model.itm_head(out.multimodal_embeddings),
      "mlm": model.mlm_head(out.text_embeddings),
      "mim": model.mim_head(masked.image_embeddings[:, 1:]),
      "mmm_text": model.mmm_text_head(masked.multimodal_embeddings[:, -ids.shape[1] :]),
      "mmm_image": model.mmm_image_head(masked.multimodal_embeddings[:, 2 : 2 + patches]),
    }
    ref = {k: v.numpy() for k, v in ref.items() if k in heads or k not in ("mim", "mmm_image")}
  apply = lambda method, *args: jax.tree.map(
    np.asarray, m.model.apply({"params": m.params}, *args, method=method)
  )
  mmm_text, mmm_image = apply("mmm", pixels, ids, patch_mask)
  ours = {
    "image": apply("encode_image", pixels),
    "text": m.encode_text(ids),
    "itm": apply("itm_logits", pixels, ids),
    "mlm": apply("text_mlm_logits", pixels, ids)[..., :vocab],
    "mim": apply("image_mim", pixels, ids, patch_mask),
    "mmm_text": mmm_text[..., :vocab],
    "mmm_image": mmm_image,
  }
  return ref, {k: ours[k] for k in ref}


def check_flava(ref, ours, valid):
  """Every output within 1e-4 of the largest (text heads at the valid positions: transformers also
  computes the padding positions, from masked attention rows)."""
  for name in ref:
    a, b = (
      (ours[name][valid], ref[name][valid])
      if name in ("mlm", "mmm_text")
      else (ours[name], ref[name])
    )
    np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()), err_msg=name)


def test_hf_flava_parity(tmp_path):
  """FlavaForPreTraining: contrastive embeddings, ITM, MLM, MIM and both MMM heads (with masked patches)
  within 1e-4; FlavaModel (no heads) converts with zero heads and says so."""
  folder = tmp_path / "hf_flava"
  model = make_hf_flava(folder)
  vocab = model.config.text_config.vocab_size
  logs = []
  convert.convert("hf_flava", str(folder), str(tmp_path / "w"), log=logs.append)
  assert any("image_codebook" in line and "left out" in line for line in logs), logs
  m = vlm_jax.load(str(tmp_path / "w"))
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(len(SENTENCES), 32, 32, 3)).astype(np.float32)
  patch_mask = rng.random((len(SENTENCES), 16)) < 0.4
  ids = m.tokenize(SENTENCES)
  valid = ids != 0
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
  ref, ours = flava_outputs(model, m, pixels, ids, patch_mask)
  check_flava(ref, ours, valid)
  assert float(m.params["logit_scale"]) == pytest.approx(model.flava.logit_scale.item())
  # The inference API: m.match is the ITM head's probability of a match; m.fill_mask reads the multimodal
  # MLM head over the image and the text with its [MASK]s (no patch masked).
  np.testing.assert_allclose(
    m.match(pixels, ids), torch.softmax(torch.from_numpy(ref["itm"]), -1).numpy()[:, 1], atol=1e-5
  )
  texts = ["a [MASK] circle", "two [MASK] on a [MASK]"]
  masked_ids = m.tokenize_masked(texts)
  with torch.no_grad():
    mm = model.flava(
      input_ids=t(masked_ids.astype(np.int64)),
      attention_mask=t((masked_ids != 0) * 1),
      pixel_values=t(pixels[:2].transpose(0, 3, 1, 2)),
    ).multimodal_embeddings
    mm_probs = torch.softmax(model.mmm_text_head(mm[:, -ids.shape[1] :]), -1).numpy()
  _check_fill_mask(m, pixels[:2], texts, masked_ids, mm_probs)
  # MLM and MMM text losses over our padded vocabulary equal transformers' cross-entropy over the real one.
  labels = np.where(valid & (np.arange(ids.shape[1]) % 3 == 1), ids, -100)
  apply = lambda method, *args: m.model.apply({"params": m.params}, *args, method=method)
  for name, full in (
    ("mlm", apply("text_mlm_logits", pixels, ids)),
    ("mmm_text", apply("mmm", pixels, ids, patch_mask)[0]),
  ):
    assert full.shape[-1] > vocab, name
    ref_loss = torch.nn.functional.cross_entropy(
      torch.from_numpy(ref[name]).reshape(-1, vocab), t(labels.astype(np.int64)).reshape(-1)
    ).item()
    loss, _, _ = token_cross_entropy(full, np.maximum(labels, 0), labels >= 0)
    assert float(loss) == pytest.approx(ref_loss, abs=1e-5), name
  # FlavaModel: the encoders and the contrastive head convert; the missing heads start at zero.
  (tmp_path / "hf_flava_model").mkdir()
  model.flava.save_pretrained(tmp_path / "hf_flava_model")
  logs = []
  cfg, params = convert.load_pretrained(
    str(tmp_path / "hf_flava_model"),
    "hf_flava",
    log=logs.append,
    tokenizer_path=str(folder / "vocab.txt"),
  )
  assert any("itm_head" in line and "mlm_head" in line for line in logs), logs
  np.testing.assert_array_equal(params["itm_head"]["kernel"], 0)
  image = np.asarray(m.model.apply({"params": params}, pixels, method="encode_image"))
  np.testing.assert_allclose(image, ref["image"], atol=1e-4)


def big_vision_npz(model, path):
  """A big_vision SigLIP checkpoint of transformers' `model`: transformers' own conversion
  (src/transformers/models/siglip/convert_siglip_to_hf.py: `create_rename_keys`, `rename_key`,
  `read_in_q_k_v_head`) run backwards, restated here from that script."""
  config = model.config
  vd, td = config.vision_config.hidden_size, config.text_config.hidden_size
  vh, th = config.vision_config.num_attention_heads, config.text_config.num_attention_heads
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  keys = [
    ("img/embedding/kernel", "vision_model.embeddings.patch_embedding.weight"),
    ("img/embedding/bias", "vision_model.embeddings.patch_embedding.bias"),
    ("img/pos_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("img/Transformer/encoder_norm/scale", "vision_model.post_layernorm.weight"),
    ("img/Transformer/encoder_norm/bias", "vision_model.post_layernorm.bias"),
    ("img/MAPHead_0/probe", "vision_model.head.probe"),
    ("img/MAPHead_0/LayerNorm_0/scale", "vision_model.head.layernorm.weight"),
    ("img/MAPHead_0/LayerNorm_0/bias", "vision_model.head.layernorm.bias"),
    ("img/MAPHead_0/MlpBlock_0/Dense_0/kernel", "vision_model.head.mlp.fc1.weight"),
    ("img/MAPHead_0/MlpBlock_0/Dense_0/bias", "vision_model.head.mlp.fc1.bias"),
    ("img/MAPHead_0/MlpBlock_0/Dense_1/kernel", "vision_model.head.mlp.fc2.weight"),
    ("img/MAPHead_0/MlpBlock_0/Dense_1/bias", "vision_model.head.mlp.fc2.bias"),
    (
      "img/MAPHead_0/MultiHeadDotProductAttention_0/out/kernel",
      "vision_model.head.attention.out_proj.weight",
    ),
    (
      "img/MAPHead_0/MultiHeadDotProductAttention_0/out/bias",
      "vision_model.head.attention.out_proj.bias",
    ),
    ("txt/Embed_0/embedding", "text_model.embeddings.token_embedding.weight"),
    ("txt/pos_embedding", "text_model.embeddings.position_embedding.weight"),
    ("txt/Encoder_0/encoder_norm/scale", "text_model.final_layer_norm.weight"),
    ("txt/Encoder_0/encoder_norm/bias", "text_model.final_layer_norm.bias"),
    ("txt/head/kernel", "text_model.head.weight"),
    ("txt/head/bias", "text_model.head.bias"),
  ]
  block = {
    "LayerNorm_0/scale": "layer_norm1.weight", "LayerNorm_0/bias": "layer_norm1.bias",
    "LayerNorm_1/scale": "layer_norm2.weight", "LayerNorm_1/bias": "layer_norm2.bias",
    "MlpBlock_0/Dense_0/kernel": "mlp.fc1.weight", "MlpBlock_0/Dense_0/bias": "mlp.fc1.bias",
    "MlpBlock_0/Dense_1/kernel": "mlp.fc2.weight", "MlpBlock_0/Dense_1/bias": "mlp.fc2.bias",
  }  # fmt: skip
  for a, p in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out")):
    for kind, suffix in (("kernel", "weight"), ("bias", "bias")):
      block[f"MultiHeadDotProductAttention_0/{a}/{kind}"] = f"self_attn.{p}_proj.{suffix}"
  for stack, prefix, layers in (
    ("img/Transformer", "vision_model.encoder.layers", config.vision_config.num_hidden_layers),
    ("txt/Encoder_0", "text_model.encoder.layers", config.text_config.num_hidden_layers),
  ):
    keys += [
      (f"{stack}/encoderblock_{i}/{bv}", f"{prefix}.{i}.{hf}")
      for i in range(layers)
      for bv, hf in block.items()
    ]
  out = {}
  for bv, name in keys:
    value = state.pop(name)
    width, heads = (vd, vh) if name.startswith("vision") else (td, th)
    if name.endswith("patch_embedding.weight"):
      value = value.transpose(2, 3, 1, 0)  # rename_key: transpose(3, 2, 0, 1)
    elif name.endswith("weight") and "embedding" not in name and value.ndim == 2:
      value = value.T
    if any(p in name for p in ("q_proj", "k_proj", "v_proj")):  # [in, heads, head_dim]
      value = value.reshape(width, heads, -1) if value.ndim == 2 else value.reshape(heads, -1)
    elif "out_proj.weight" in name:  # [heads, head_dim, out]
      value = value.reshape(heads, -1, width)
    elif "position_embedding" in name:
      value = value[None]
    out[bv] = value
  head = "img/MAPHead_0/MultiHeadDotProductAttention_0"
  in_w = state.pop("vision_model.head.attention.in_proj_weight")
  in_b = state.pop("vision_model.head.attention.in_proj_bias")
  for i, p in enumerate(("query", "key", "value")):
    out[f"{head}/{p}/kernel"] = in_w[i * vd : (i + 1) * vd].T.reshape(vd, vh, -1)
    out[f"{head}/{p}/bias"] = in_b[i * vd : (i + 1) * vd].reshape(vh, -1)
  out["t"], out["b"] = state.pop("logit_scale").reshape(1), state.pop("logit_bias").reshape(1)
  assert not [k for k in state if not k.endswith("position_ids")], sorted(state)
  np.savez(path, **{f"params/{k}": v for k, v in out.items()})


def test_big_vision_siglip_npz_imports_with_transformers_parity(tmp_path):
  folder = tmp_path / "hf_siglip"
  model = make_hf_siglip(str(folder))
  big_vision_npz(model, tmp_path / "siglip.npz")
  result = subprocess.run(
    [
      sys.executable, "-m", "vlm_jax.convert", "--from", "big_vision_siglip",
      "--input", "siglip.npz", "--tokenizer", "hf_siglip/spiece.model", "--output", "w",
    ],
    env=helpers.subprocess_env(1), capture_output=True, text=True, timeout=300, cwd=tmp_path,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  m = check_parity(tmp_path / "w", model, bias=True)
  pixels = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = m.tokenize(SENTENCES[:3])
  image_ref, text_ref, _ = reference_outputs(model, pixels, ids)
  np.testing.assert_allclose(m.encode_image(pixels), image_ref, atol=1e-5)
  np.testing.assert_allclose(m.encode_text(ids), text_ref, atol=1e-5)
  # The same parameters, bit for bit, as importing transformers' folder of the same model.
  convert.convert("hf_siglip", str(folder), str(tmp_path / "from_hf"), log=lambda *a: None)
  got, want = helpers.load_params(tmp_path / "w"), helpers.load_params(tmp_path / "from_hf")
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
