"""vlm_jax: interchangeable vision-language pretraining objectives in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned to the versions the test suite runs against; bump together and re-run `pytest`.
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "tensorflow-datasets==4.9.10",
  "grain==0.2.18",
  "array-record==0.8.6",
  "einops==0.8.2",
  "ml-collections==1.1.0",
  "pillow==13.0.0",
  "tensorboardX==2.6.5",
  "absl-py==2.5.1",
  "sentencepiece==0.2.3",
  "regex==2026.11.15",  # CLIP's BPE pre-tokenizer (\p{L} classes)
  "ftfy==6.3.1",  # CLIP's BPE text clean-up
  "safetensors==0.8.0",  # reading imported checkpoints
  "matplotlib==3.11.2",  # vlm_jax.tables plots
  "importlib-resources==7.1.0",  # tensorflow-datasets imports it for builders defined in packages
  "numpy>=2.0,<3",
]

GCSFS = "gcsfs==2026.10.1"

setup(
  name="vlm_jax",
  version="0.1.0",
  description="One sharded training loop for CLIP/SigLIP/LiT/CoCa, ViLT/FLAVA and prefix-LM pretraining.",
  packages=find_packages(include=["vlm_jax", "vlm_jax.*"]),
  python_requires=">=3.10",
  install_requires=INSTALL_REQUIRES,
  # CLIP's BPE vocabulary (public data, MIT; vlm_jax/data/vocab/README.md gives its source and checksum).
  package_data={"vlm_jax.data": ["vocab/*.gz", "vocab/README.md"]},
  extras_require={
    # gs:// workdirs and data (etils epath and fsspec use gcsfs when TensorFlow is absent).
    "gcs": [GCSFS],
    # Cloud TPU VMs, and `--mode=compile --topology=v5e:16x16` on any host: libtpu as jax[tpu] pins it.
    "tpu": ["jax[tpu]==0.10.2", GCSFS],
    # torch 2.13.0 is pinned so that pip takes the CPU wheel; transformers is the reference the
    # weight-import tests compare against; gcp-storage-emulator serves the GCS API on 127.0.0.1 for the
    # bucket tests; libtpu compiles for TPU topologies on this CPU host; ruff lints and formats (CI).
    "test": [
      "pytest==9.2.0",
      "pytest-xdist==3.8.0",
      "ruff==0.17.6",
      "torch==2.13.0",
      "transformers==5.23.0",
      GCSFS,
      "gcp-storage-emulator==2026.7.19",
      "jax[tpu]==0.10.2",
      "wandb==0.31.0",
    ],
    "convert": ["torch==2.13.0"],
    "wandb": [
      "wandb==0.31.0"
    ],  # train.wandb=True  # reading .pt/.bin checkpoints (.safetensors needs no torch)
    "tf": ["tensorflow"],
  },
)
