"""Export to transformers and open_clip: trained micro CLIP, SigLIP, ViLT and FLAVA runs load with
transformers' classes (CLIP also with open_clip) and give vlm_jax's embeddings and logits; importing the
export gives back the run's parameters bit for bit; what the target cannot express is a one-line error."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from vlm_jax import convert
from vlm_jax.convert import export
from vlm_jax.core import checkpoint
from vlm_jax.errors import ConfigError
from vlm_jax.train import trainer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CAPTIONS = ["a red circle", "a small blue square in the top left", "green!", "a yellow triangle"]


def _train(workdir, base=helpers.TINY, **overrides):
  config = helpers.micro_config(base, **{"train.duration": "3 steps", "evals": {}, **overrides})
  trainer.train(config, str(workdir), log=lambda *a: None)


def _export_cli(cwd, workdir, target, output, *extra, code=0):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "vlm_jax.export",
      "--workdir",
      workdir,
      "--to",
      target,
      "--output",
      output,
      *extra,
    ],
    env=helpers.subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=cwd,
  )
  assert result.returncode == code, result.stderr[-3000:]
  return result


def _check_parity(m, hf, pixels, ids):
  with torch.no_grad():
    out = hf(
      input_ids=torch.from_numpy(ids).long(),
      pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
    )
  np.testing.assert_allclose(out.image_embeds.numpy(), m.encode_image(pixels), atol=1e-5)
  np.testing.assert_allclose(out.text_embeds.numpy(), m.encode_text(ids), atol=1e-5)
  logits = m.similarity(pixels, ids)
  np.testing.assert_allclose(
    out.logits_per_image.numpy(), logits, atol=1e-5 * max(1.0, np.abs(logits).max())
  )


def _same_params(imported, run, vocab: int):
  """Bit for bit, but the embedding rows past the tokenizer's vocabulary: padding for sharding, never an
  input (an import fills them with zeros)."""
  got, want = helpers.load_params(imported), helpers.load_params(run)
  want = checkpoint.unstack_layers(want)  # an import's layers are unrolled; a run's may be scanned
  assert got.keys() == want.keys()
  for path in want:
    g, w = (
      (got[path][:vocab], want[path][:vocab]) if "token_embed" in path else (got[path], want[path])
    )
    np.testing.assert_array_equal(g, w, err_msg=path)


def test_a_trained_clip_loads_in_transformers_with_its_tokenizer_and_imports_back(tmp_path):
  import vlm_jax  # pylint: disable=import-outside-toplevel

  overrides = {"data.tokenizer": "clip_bpe", "model.text.pad_id": -1, "model.text.pool": "argmax"}
  _train(tmp_path / "runs" / "clip", **overrides)
  result = _export_cli(tmp_path, "runs/clip", "hf_clip", "exported/clip")
  assert "vocab.json, merges.txt" in result.stdout
  m = vlm_jax.load(str(tmp_path / "runs" / "clip"))
  hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "exported" / "clip")).eval()
  processor = transformers.CLIPProcessor.from_pretrained(str(tmp_path / "exported" / "clip"))
  ids = m.tokenize(CAPTIONS)
  hf_ids = np.asarray(processor.tokenizer(CAPTIONS, padding="max_length", max_length=16).input_ids)
  # The same ids up to the end-of-text token; transformers pads with it where open_clip pads with 0.
  text = np.cumsum(ids == m.tokenizer.eos_id, axis=1) - (ids == m.tokenizer.eos_id) == 0
  np.testing.assert_array_equal(np.where(text, hf_ids, 0), np.where(text, ids, 0))
  with torch.no_grad():
    hf_text = hf.get_text_features(input_ids=torch.from_numpy(hf_ids).long())
  hf_text = getattr(hf_text, "pooler_output", hf_text).numpy()
  hf_text /= np.linalg.norm(hf_text, axis=-1, keepdims=True)
  np.testing.assert_allclose(hf_text, m.encode_text(ids), atol=1e-5)
  pixels = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  _check_parity(m, hf, pixels, ids)
  convert.convert("hf_clip", str(tmp_path / "exported" / "clip"), str(tmp_path / "back"), log=print)
  _same_params(tmp_path / "back", tmp_path / "runs" / "clip", m.tokenizer.vocab_size)


def test_a_trained_siglip_loads_in_transformers_and_imports_back(tmp_path):
  import vlm_jax  # pylint: disable=import-outside-toplevel

  # Scanned layers, as the large recipes train them: exported unrolled.
  _train(
    tmp_path / "siglip", helpers.SIGLIP_TINY, **{"model.text.pad_id": -1, "model.scan_layers": True}
  )
  logs = []
  export.export(str(tmp_path / "siglip"), "hf_siglip", str(tmp_path / "out"), log=logs.append)
  assert any("no tokenizer class for this run's SentencePieceTokenizer" in line for line in logs)
  m = vlm_jax.load(str(tmp_path / "siglip"))
  # The same from Python, on the loaded model: the same files.
  export.export(m, "hf_siglip", str(tmp_path / "out_from_python"), log=logs.append)
  for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
    assert (tmp_path / "out" / name).read_bytes() == (
      tmp_path / "out_from_python" / name
    ).read_bytes()
  hf = transformers.SiglipModel.from_pretrained(str(tmp_path / "out")).eval()
  pixels = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
  _check_parity(m, hf, pixels, m.tokenize(CAPTIONS))
  convert.convert("hf_siglip", str(tmp_path / "out"), str(tmp_path / "back"), log=print)
  _same_params(tmp_path / "back", tmp_path / "siglip", m.tokenizer.vocab_size)


def test_a_converted_siglip_exports_back_to_its_weights_and_tokenizer(tmp_path):
  """HF SigLIP -> vlm_jax -> HF: the same weights bit for bit, and SigLIP's SentencePiece model, which
  transformers' SiglipTokenizer reads to vlm_jax's ids."""
  from tests.hf_models import make_hf_siglip  # pylint: disable=import-outside-toplevel
  import vlm_jax  # pylint: disable=import-outside-toplevel

  original = make_hf_siglip(tmp_path / "hf")
  convert.convert("hf_siglip", str(tmp_path / "hf"), str(tmp_path / "w"), log=print)
  logs = []
  export.export(str(tmp_path / "w"), "hf_siglip", str(tmp_path / "out"), log=logs.append)
  assert "spiece.model" in logs[-1], logs
  hf = transformers.SiglipModel.from_pretrained(str(tmp_path / "out"))
  want = {k: v.numpy() for k, v in original.state_dict().items()}
  got = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  m = vlm_jax.load(str(tmp_path / "w"))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  ids = m.tokenize(CAPTIONS)
  hf_ids = tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=ids.shape[1])
  np.testing.assert_array_equal(np.asarray(hf_ids.input_ids), ids)


def test_what_transformers_cannot_express_is_one_line(tmp_path):
  _train(tmp_path / "siglip", helpers.SIGLIP_TINY)  # the tiny recipe masks its padding
  with pytest.raises(ConfigError) as error:
    export.export(str(tmp_path / "siglip"), "hf_siglip", str(tmp_path / "out"), log=print)
  assert "\n" not in str(error.value) and "masks padding" in str(error.value)
  with pytest.raises(ConfigError, match="holds a 'siglip' model; --to hf_clip exports 'clip'"):
    export.export(str(tmp_path / "siglip"), "hf_clip", str(tmp_path / "out"), log=print)


def test_a_trained_clip_loads_in_open_clip_and_imports_back(tmp_path):
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  import vlm_jax  # pylint: disable=import-outside-toplevel
  from vlm_jax.tools import open_clip_step  # pylint: disable=import-outside-toplevel

  overrides = {"data.tokenizer": "clip_bpe", "model.text.pad_id": -1, "model.text.pool": "argmax"}
  _train(tmp_path / "clip", **overrides)
  export.export(str(tmp_path / "clip"), "openclip", str(tmp_path / "oc"), log=print)
  # open_clip without torchvision (not installed here): its `create_model("local-dir:...")` is
  # `CLIP(**model_cfg)` then `load_state_dict` of the weights, done here the same way.
  _, model_lib, _ = open_clip_step._load_open_clip()  # pylint: disable=protected-access
  from open_clip import tokenizer  # pylint: disable=import-outside-toplevel

  saved = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
  model = model_lib.CLIP(**saved["model_cfg"]).eval()
  weights = load_file(str(tmp_path / "oc" / "open_clip_model.safetensors"))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  m = vlm_jax.load(str(tmp_path / "clip"))
  ids = m.tokenize(CAPTIONS)
  np.testing.assert_array_equal(
    tokenizer.SimpleTokenizer()(CAPTIONS, context_length=16).numpy(), ids
  )
  pixels = np.random.default_rng(2).normal(size=(4, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    image = model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
    text = model.encode_text(torch.from_numpy(ids).long(), normalize=True)
  np.testing.assert_allclose(image.numpy(), m.encode_image(pixels), atol=1e-5)
  np.testing.assert_allclose(text.numpy(), m.encode_text(ids), atol=1e-5)
  # convert's open_clip import reads the same state dict back (QuickGELU, as the run).
  torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, tmp_path / "oc.pt")
  vision, txt = saved["model_cfg"]["vision_cfg"], saved["model_cfg"]["text_cfg"]
  convert.convert(
    "openclip",
    str(tmp_path / "oc.pt"),
    str(tmp_path / "back"),
    log=print,
    image_heads=vision["width"] // vision["head_width"],  # a state dict does not fix the heads
    text_heads=txt["heads"],
  )
  _same_params(tmp_path / "back", tmp_path / "clip", m.tokenizer.vocab_size)


def test_a_trained_vilt_loads_in_transformers_for_mlm_and_retrieval(tmp_path):
  from tests.test_convert import _vilt_inputs  # pylint: disable=import-outside-toplevel
  import vlm_jax  # pylint: disable=import-outside-toplevel

  _train(tmp_path / "vilt", helpers.VILT_TINY)
  export.export(str(tmp_path / "vilt"), "hf_vilt", str(tmp_path / "out"), log=print)
  m = vlm_jax.load(str(tmp_path / "vilt"))
  vocab = m.tokenizer.vocab_size
  pixels = np.random.default_rng(3).normal(size=(4, 32, 32, 3)).astype(np.float32)
  ids = m.tokenize(CAPTIONS)
  mlm = transformers.ViltForMaskedLM.from_pretrained(str(tmp_path / "out")).eval()
  retrieval = transformers.ViltForImageAndTextRetrieval.from_pretrained(
    str(tmp_path / "out")
  ).eval()
  with torch.no_grad():
    logits_ref = mlm(**_vilt_inputs(ids, pixels)).logits.numpy()
    rank = retrieval(**_vilt_inputs(ids, pixels)).logits.numpy()[:, 0]
  variables = {"params": m.params}
  logits = np.asarray(m.model.apply(variables, pixels, ids, method="mlm_logits"))[..., :vocab]
  valid = ids != 0  # transformers also computes the padding positions, from masked attention rows
  np.testing.assert_allclose(
    logits[valid], logits_ref[valid], atol=1e-4 * max(1.0, np.abs(logits).max())
  )
  itm = np.asarray(m.model.apply(variables, pixels, ids, method="itm_logits"))
  np.testing.assert_allclose(itm[:, 1] - itm[:, 0], rank, atol=1e-4)
  # Re-imported: the same model (the ITM head as (0, r), the same matching probabilities).
  convert.convert("hf_vilt", str(tmp_path / "out"), str(tmp_path / "back"), log=print)
  back = vlm_jax.load(str(tmp_path / "back"))
  np.testing.assert_allclose(back.match(pixels, ids), m.match(pixels, ids), atol=1e-6)


def _flava_inputs(m, seed=4):
  rng = np.random.default_rng(seed)
  size, patch = m.model.image["image_size"], m.model.image["patch_size"]
  pixels = rng.normal(size=(4, size, size, 3)).astype(np.float32)
  return pixels, m.tokenize(CAPTIONS), rng.random((4, (size // patch) ** 2)) < 0.4


@pytest.mark.ci  # two CLI runs and a FLAVA's training: the fast tier's converted FLAVA covers the layout
def test_a_trained_flava_loads_in_transformers_and_imports_back(tmp_path):
  """Pixel-regression MIM heads have no place in transformers' FLAVA: a one-line error until the user drops
  them; then FlavaForPreTraining (and FlavaModel) load the rest and give vlm_jax's outputs."""
  from tests.test_convert import check_flava, flava_outputs  # pylint: disable=import-outside-toplevel
  import vlm_jax  # pylint: disable=import-outside-toplevel

  _train(tmp_path / "runs" / "flava", helpers.FLAVA_TINY)
  refused = _export_cli(tmp_path, "runs/flava", "hf_flava", "exported/flava", code=2)
  assert (
    "regress pixels" in refused.stderr and "--drop image_mim_head,mm_mim_head" in refused.stderr
  )
  result = _export_cli(
    tmp_path, "runs/flava", "hf_flava", "exported/flava", "--drop=image_mim_head,mm_mim_head"
  )
  assert "exported without mim_head, mmm_image_head" in result.stdout, result.stdout
  folder = str(tmp_path / "exported" / "flava")
  hf, info = transformers.FlavaForPreTraining.from_pretrained(folder, output_loading_info=True)
  assert not info["unexpected_keys"], info
  assert {k.split(".")[0] for k in info["missing_keys"]} == {"mim_head", "mmm_image_head"}, info
  _, info = transformers.FlavaModel.from_pretrained(folder, output_loading_info=True)
  assert not info["missing_keys"], info  # the heads are FlavaForPreTraining's
  assert {k.split(".")[0] for k in info["unexpected_keys"]} == {
    "itm_head",
    "mlm_head",
    "mmm_text_head",
  }
  m = vlm_jax.load(str(tmp_path / "runs" / "flava"))
  pixels, ids, patch_mask = _flava_inputs(m)
  ref, ours = flava_outputs(hf.eval(), m, pixels, ids, patch_mask, heads=())
  assert set(ref) == {"image", "text", "itm", "mlm", "mmm_text"}
  check_flava(ref, ours, ids != 0)
  convert.convert("hf_flava", folder, str(tmp_path / "back"), log=print)
  got, want = (
    helpers.load_params(tmp_path / "back"),
    helpers.load_params(tmp_path / "runs" / "flava"),
  )
  assert got.keys() == want.keys()
  vocab = m.tokenizer.vocab_size
  for path in want:
    if "mim_head" in path:  # dropped: the import starts them at zero
      np.testing.assert_array_equal(got[path], np.zeros_like(want[path]) + ("ln/scale" in path))
    elif "token_embed" in path:  # rows past the vocabulary pad it
      np.testing.assert_array_equal(got[path][:vocab], want[path][:vocab], err_msg=path)
    elif "mlm_head/decoder" in path:  # and columns of the word heads
      np.testing.assert_array_equal(got[path][..., :vocab], want[path][..., :vocab], err_msg=path)
    else:
      np.testing.assert_array_equal(got[path], want[path], err_msg=path)


def test_a_converted_flava_exports_back_to_its_transformers_weights(tmp_path):
  """HF FLAVA -> vlm_jax -> HF: every head (MIM over visual codes included) and the WordPiece vocabulary
  come back; the outputs equal vlm_jax's. What differs is what the import folds or leaves out (the
  token-type row in the positions, the unread unimodal poolers, the DALL-E codebook)."""
  from tests.hf_models import make_hf_flava  # pylint: disable=import-outside-toplevel
  from tests.test_convert import check_flava, flava_outputs  # pylint: disable=import-outside-toplevel
  import vlm_jax  # pylint: disable=import-outside-toplevel

  original = make_hf_flava(tmp_path / "hf")
  convert.convert("hf_flava", str(tmp_path / "hf"), str(tmp_path / "w"), log=print)
  export.export(str(tmp_path / "w"), "hf_flava", str(tmp_path / "out"), log=print)
  hf = transformers.FlavaForPreTraining.from_pretrained(str(tmp_path / "out")).eval()
  m = vlm_jax.load(str(tmp_path / "w"))
  pixels, ids, patch_mask = _flava_inputs(m)
  ref, ours = flava_outputs(hf, m, pixels, ids, patch_mask)
  assert {"mim", "mmm_image"} <= set(ref)
  check_flava(ref, ours, ids != 0)
  want = {k: v.numpy() for k, v in original.state_dict().items()}
  got = {k: v.numpy() for k, v in hf.state_dict().items()}
  t = "flava.text_model.embeddings."
  np.testing.assert_array_equal(
    got[t + "position_embeddings.weight"],
    want[t + "position_embeddings.weight"] + want[t + "token_type_embeddings.weight"][0],
  )
  folded = (t + "position_embeddings", t + "token_type_embeddings", "image_codebook.")
  poolers = (
    "flava.image_model.pooler.",
    "flava.text_model.pooler.",
    "flava.multimodal_model.pooler.",
  )
  for key in want:
    if key.startswith(folded + poolers) or key.endswith(("position_ids", "token_type_ids")):
      continue
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  # The multimodal pooler is the ITM head's (vlm_jax has one); the unimodal ones are zeros.
  np.testing.assert_array_equal(
    got["flava.multimodal_model.pooler.dense.weight"], want["itm_head.pooler.dense.weight"]
  )
  np.testing.assert_array_equal(got["flava.text_model.pooler.dense.weight"], 0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  hf_ids = tokenizer(
    CAPTIONS, padding="max_length", truncation=True, max_length=ids.shape[1]
  ).input_ids
  np.testing.assert_array_equal(np.asarray(hf_ids), ids)
