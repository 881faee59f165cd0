"""Every objective family on the embedded data, tiny models, 2 seeds each, 120 steps (one core-hour class
of budget: about 25 minutes on 2 CPU cores for the 14 runs, one at a time).

  python launch/sweep.py experiments/sweeps/objectives_tiny.py --backend local
  python -m vlm_jax.tables runs/sweeps/objectives_tiny --format md --out runs/sweeps/objectives_tiny.md \
      --plots runs/sweeps/objectives_tiny_plots --metrics zero_shot/shape_top1,zero_shot/color_top1,\
retrieval/i2t_r10,itm/pair_auc,mlm/accuracy,captioning/color_mention_acc,captioning/cider,vqa/accuracy

All runs see the same single-object data (data.max_objects=1) at the same batch size and number of steps;
LiT is left out because it starts from another run. On a TPU VM: --backend tpu_vm with --root gs://BUCKET/sweeps.
"""

RECIPES = (
  "clip_b32.py",
  "siglip_b16.py",
  "coca_b32.py",
  "vilt_b32.py",
  "flava_b16.py",
  "prefixlm_b16.py",
  "simvlm_base.py",
)


def get_sweep():
  return dict(
    name="objectives_tiny",
    base="experiments/clip_b32.py:tiny",
    zip={"config": [f"experiments/{recipe}:tiny" for recipe in RECIPES]},
    seeds=[0, 1],
    overrides={
      "train.duration": "120 steps",
      "train.log_every": "20 steps",
      "train.checkpoint_every": "60 steps",
      "optim.warmup": "20 steps",
      "data.max_objects": 1,
    },
    root="runs/sweeps",
    tpu=dict(
      zone="us-central2-b",
      accelerator_type="v4-8",
      runtime_version="tpu-ubuntu2204-base",
      spot=True,
    ),
    slurm=dict(nodes=1, gpus_per_node=1, cpus_per_task=8, time="01:00:00"),
  )
