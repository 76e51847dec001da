"""A small classifier on digits trained by the real loop; used by the loop tests.

Run as a script it trains and prints results.json's train_loss:
  python tests/tiny_run.py WORKDIR STEPS [--hidden=H] [--batch=B]
"""

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import data as data_lib
from research import optim
from research.train import Task, base_config, distributed, train


class Classifier(nn.Module):
  hidden: int = 32

  @nn.compact
  def __call__(self, image):
    x = image.reshape(image.shape[0], -1).astype(jnp.float32) / 255.0
    return nn.Dense(10)(nn.tanh(nn.Dense(self.hidden)(x)))


def make_config(steps: int, batch: int = 32):
  config = base_config()
  config.steps = steps
  config.batch_size = batch
  config.log_every = 10
  config.checkpoint_every = 10
  config.ema_decay = 0.9
  config.optimizer.name = "adamw"
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = min(5, steps)  # never longer than the run (which is refused)
  return config


def make_task(config, hidden: int = 32) -> Task:
  model = Classifier(hidden)

  def loss(params, batch, key, train, hparams):
    del key, train, hparams
    logits = model.apply(params, batch["image"])
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None].astype(jnp.int32), 1))
    if "scale" in batch:  # lets a test poison chosen examples with NaN
      nll = nll * jnp.mean(batch["scale"])
    return nll, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  return Task(init=lambda k, b: model.init(k, b["image"]), tx=optim.make(config.optimizer, config.steps),
              loss=loss, evaluate=lambda p, k, d, h: {"final_bias_sum": float(jnp.sum(p["params"]["Dense_1"]["bias"]))},
              learning_rate=optim.learning_rate_fn(config.optimizer, config.steps))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("steps", type=int)
  parser.add_argument("--hidden", type=int, default=32)
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args()
  distributed.initialize_distributed()
  config = make_config(args.steps, args.batch)
  run = train(make_task(config, args.hidden), config, args.workdir, data_lib.load("digits", "train"))
  print(json.dumps({"train_loss": run.results["train_loss"], "devices": run.results["devices"]["count"],
                    "processes": run.results["devices"]["processes"]}))


if __name__ == "__main__":
  main()
