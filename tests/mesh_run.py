"""Trains the VAE and a small transformer stack on each mesh of the devices it sees; prints JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_run.py WORKDIR

Used by tests/test_sharding.py, which compares the losses with a one-device run.
"""

import json
import os
import sys
from unittest import mock

import jax

import tiny_transformer
from research import data as data_lib
from research.tasks import autoencoder
from research.train import base_config, images, parallel, train

MESHES = ((8, 1, 1), (2, 4, 1), (2, 2, 2))


def config_for(model: str, steps: int, mesh=(-1, 1, 1)):
  config = base_config()
  if model == "vae":
    config.model, config.latent_dim, config.hidden = "vae", 4, (64,)
    config.corruption, config.noise_level, config.objective, config.k, config.eval_k = "gaussian", 0.3, "elbo", 1, 4
    config.kl_weight = 1.0
  config.steps, config.batch_size, config.log_every, config.checkpoint_every = steps, 32, 2, 4
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  return config


def run(model: str, workdir: str, steps: int, mesh=(-1, 1, 1)):
  config = config_for(model, steps, mesh)
  digits = data_lib.load("digits", "train")["image"]
  # No curves.png: nothing here reads it, and drawing its dozen panels costs seconds a run.
  with mock.patch.object(images, "write_curves", lambda workdir: None):
    if model == "vae":
      task = autoencoder.make_task(config, digits[:32])
      return train(task, config, workdir, {"image": digits}, {"image": digits[:32]})
    return train(tiny_transformer.make_task(config), config, workdir, {"image": digits})


def main():
  workdir = sys.argv[1]
  out = {"devices": jax.device_count(), "runs": {}}
  for model in ("vae", "transformer"):
    for mesh in MESHES:
      name = f"{model}_{'x'.join(map(str, mesh))}"
      result = run(model, os.path.join(workdir, name), 6, mesh)
      out["runs"][name] = {"train_loss": result.results["train_loss"],
                           "params": parallel.shard_sizes(result.state.params),
                           "opt_state": parallel.shard_sizes(result.state.opt_state)}
  # A checkpoint written on one mesh restores onto another: 4 steps on (2, 4, 1), then 2 more on (2, 2, 2).
  for model in ("vae", "transformer"):
    resumed_dir = os.path.join(workdir, f"{model}_moved")
    run(model, resumed_dir, 4, (2, 4, 1))
    result = run(model, resumed_dir, 6, (2, 2, 2))
    out["runs"][f"{model}_moved"] = {"train_loss": result.results["train_loss"]}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
