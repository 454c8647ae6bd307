"""rollgraph: LLM generation from a rolling pool of CUDA graphs.

The package root imports nothing heavy, so that `rollgraph.client` and `rollgraph.protocol` work on a machine without
torch.
"""

__version__ = "0.1.0"
