"""The one training loop: state, step, parallelism, checkpoints, logging, results."""

from research.train.checkpoint import Checkpointer, restore_pytree, save_pytree
from research.train.config import ConfigError, base_config, check_choice, check_common, check_positive, check_workdir
from research.train import distributed, parallel
from research.train.loop import Reuse, Run, reusing, train
from research.train.members import Engine, Members, check_swept, member_configs
from research.train.monitor import Interrupted, NonFiniteLossError
from research.train.results import environment, write_results
from research.train.stages import Pipeline, StageOutput, stage_output
from research.train.step import (Keys, TrainState, accumulate_gradients, apply_gradients, eval_params, init_params,
                                 init_state, make_multi_step, make_train_step)
from research.train.task import Task
