"""Infrastructure shared by training and evaluation: mesh and sharding rules, checkpointing, the optimizer,
the train state, FLOP counts, and the Experiment that builds a config's parts."""
