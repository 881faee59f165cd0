"""vlm_jax: vision-language pretraining objectives on one pjit-sharded training loop."""

__version__ = "0.1.0"


def load(workdir: str, step=None, **kwargs):
  """A trained or converted workdir as an inference model; see `vlm_jax.inference`."""
  from vlm_jax import inference  # pylint: disable=import-outside-toplevel  (keeps `import vlm_jax` light)

  return inference.load(workdir, step, **kwargs)
