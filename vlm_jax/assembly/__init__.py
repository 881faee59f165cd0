"""The assembler: builds a config's model, objectives, data, optimizer and sharded state
(`experiment.Experiment`), and counts a step's FLOPs (`flops`). It sits above the components and the
infrastructure, and below evaluation and training, which both start from an Experiment.
"""
