"""The one training loop: state, step, parallelism, checkpoints, logging, results."""

from research.train.checkpoint import Checkpointer, restore_pytree, save_pytree
from research.train.config import ConfigError, check_choice, check_common, check_positive
from research.train.results import environment, write_results
