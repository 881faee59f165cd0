"""Sweeps and launchers: expand a sweep file into named runs and run them locally, on Cloud TPU VMs or
through SLURM (`python launch/sweep.py SWEEP --backend local|tpu_vm|slurm [--dry-run]`)."""
