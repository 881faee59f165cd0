#!/bin/bash
# Runs on every worker of a Cloud TPU VM (the tpu_vm backend calls it through `gcloud ... ssh --worker=all`):
#   run_tpu.sh setup        create the venv once ($VLM_JAX_VENV, default ~/vlm_jax_venv), install vlm_jax[tpu]
#   run_tpu.sh train ARGS   python -m vlm_jax.main ARGS (jax.distributed finds the other workers itself)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VLM_JAX_VENV:-$HOME/vlm_jax_venv}"
case "${1:-}" in
  setup)
    if [ ! -x "$VENV/bin/python" ]; then
      python3 -m venv "$VENV"
      "$VENV/bin/pip" install -q -U pip
      "$VENV/bin/pip" install -q "jax[tpu]==0.10.2" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
    fi
    # The code may have changed since the venv was made: (re)install it with its TPU extra (jax[tpu], and
    # gcsfs for the gs:// workdir); jax[tpu] already satisfies its pins.
    "$VENV/bin/pip" install -q -e ".[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
    ;;
  train)
    shift
    exec "$VENV/bin/python" -m vlm_jax.main "$@"
    ;;
  *)
    echo "usage: run_tpu.sh setup | train ARGS" >&2
    exit 2
    ;;
esac
