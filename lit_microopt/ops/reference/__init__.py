"""The pure-PyTorch definition of every op: readable, vectorised, the fallback and the tests' oracle."""
from lit_microopt.ops.reference.adam_mini import adam_mini_update_, block_mean_squares, stochastic_round  # noqa: F401
