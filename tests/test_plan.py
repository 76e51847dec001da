"""`python -m launch plan`: the loop's step compiled for N simulated devices, never run, with its figures."""

import json
import math

import pytest

from conftest import run_python
from research.train import plan as plan_lib

SMOKE = "--config=experiments/gpt2.py:smoke"
# A BPE vocabulary of a given size (which the plan knows without the text), fitted on a little of it.
BPE = ["--config.tokenizer=bpe", "--config.bpe_vocab_size=384", "--config.tokenizer_train_chars=200000"]


@pytest.mark.slow
def test_plan_counts_what_a_run_counts_and_fsdp_shards_the_state(tmp_path):
  run = run_python(["-m", "experiments.gpt2", f"--workdir={tmp_path / 'run'}", SMOKE, *BPE])
  assert run.returncode == 0, run.stderr[-2000:]
  ran = json.loads((tmp_path / "run" / "results.json").read_text())

  def planned(devices, *flags):
    out = tmp_path / f"plan_{devices}_{len(flags)}.json"
    done = run_python(["-m", "launch", "plan", "gpt2", f"--devices={devices}", f"--json={out}", "--accelerator=H100",
                       "--", SMOKE, *BPE, *flags])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout

  one, text = planned(1)
  # The FLOPs of the smoke model's step, as the run's loop counted them.
  assert one["flops_per_step"] == pytest.approx(ran["flops_per_step"], rel=1e-6)
  assert one["params_bytes"] == 4 * one["parameters"] and one["opt_state_bytes"] >= 2 * one["params_bytes"]
  assert "H100 x 1: step " in text and "the step's XLA:CPU peak fits" in text
  sharded, _ = planned(2, "--config.mesh.fsdp=2", "--config.mesh.data=1")
  assert sharded["devices"] == 2 and sharded["mesh"]["fsdp"] == 2
  assert sharded["parameters"] == one["parameters"]
  assert sharded["params_bytes"] < 0.75 * one["params_bytes"]  # sharded kernels: about half per device


# One process plans every paper preset on 8 simulated devices: (experiment, preset, overrides). The
# transformers' blocks as one nn.scan compile one block instead of 12 or 28: the same parameters and,
# as the plan counts FLOPs with the scan unrolled, the same FLOPs per step.
PAPER_PRESETS = [
    ("bert", "base", {"scan_layers": True}),
    ("diffusion", "ddpm_cifar10", {}),
    ("diffusion", "dit_xl2", {"dit_scan_layers": True}),
    ("autoencoder", "iwae_mnist", {"mesh.data": 4, "mesh.tensor": 2}),  # the paper's batch of 20 is not 8 ways
]
PLAN_ALL = """
import importlib, json, sys
import jax
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
from research.train import plan as plan_lib
out = {}
for experiment, preset, overrides in json.loads(sys.argv[1]):
  module = importlib.import_module("experiments." + experiment)
  config = module.get_config(preset)
  config.update_from_flattened_dict(overrides)
  module.check_config(config)
  task, batch = module.plan_inputs(config)
  out[preset] = plan_lib.plan(task, config, batch)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_paper_presets_plan_at_their_papers_sizes():
  done = run_python(["-c", PLAN_ALL, json.dumps(PAPER_PRESETS)])
  assert done.returncode == 0, done.stderr[-2000:]
  plans = json.loads(done.stdout.strip().splitlines()[-1])
  # The papers' parameter counts: BERT-base 110M, DDPM's CIFAR-10 U-Net 35.7M (with its attention at
  # 16x16), DiT-XL/2 675M; the IWAE's 784-200-200-50 encoder and its mirror.
  iwae = (784 * 200 + 200) + (200 * 200 + 200) + (200 * 100 + 100) + (50 * 200 + 200) + (200 * 200 + 200) + \
      (200 * 784 + 784)
  expected = {"base": 110e6, "ddpm_cifar10": 35.7e6, "dit_xl2": 675e6, "iwae_mnist": iwae}
  for preset, parameters in expected.items():
    summary = plans[preset]
    assert summary["parameters"] == pytest.approx(parameters, rel=0.04), preset
    assert summary["devices"] == 8 and math.prod(summary["mesh"].values()) == 8, preset
    assert summary["flops_per_step"] > 0 and 0 < summary["peak_bytes"] < 2**63, preset
    assert summary["params_bytes"] == 4 * summary["parameters"], preset  # float32, replicated over data
  assert plans["iwae_mnist"]["parameters"] == iwae
  assert plans["ddpm_cifar10"]["parameters"] == pytest.approx(35.7e6, rel=0.005)
  assert (plans["base"]["steps"], plans["base"]["batch_size"]) == (1_000_000, 256)
  assert (plans["dit_xl2"]["steps"], plans["dit_xl2"]["batch_size"]) == (400_000, 256)
  # Scanned blocks count every layer: DiT-XL/2's 118.6 GFLOPs (multiply-adds) per forward pass of one
  # image (Peebles & Xie, Table 4) x 2 x 3 (forward and backward) x 256 images; BERT-base's 6 N per
  # token and its attention's 12 x 2 products of 128 x 128 x 768 multiply-adds per sequence, x 2 x 3.
  assert plans["dit_xl2"]["flops_per_step"] == pytest.approx(118.6e9 * 2 * 3 * 256, rel=0.01)
  bert = plans["base"]
  tokens = 256 * 128
  assert bert["flops_per_step"] == pytest.approx(6 * bert["parameters"] * tokens + 12 * 2 * 128 * 128 * 768 * 2 * 3 * 256,
                                                 rel=0.02)
  # The IWAE step's FLOPs: about 6 per decoder parameter per sample (k = 50 of each of 20 images).
  assert plans["iwae_mnist"]["flops_per_step"] == pytest.approx(6 * (50 * 200 + 200 * 200 + 200 * 784) * 20 * 50,
                                                                rel=0.1)


def test_bad_plans_are_one_line():
  for args, message in [(["plan", "gpt2", "--devices=2", "--accelerator=B200"], "unknown accelerator 'B200'"),
                        (["plan", "gpt2", "--mfu=2"], "--mfu must be in (0, 1]"),
                        (["plan", "em_gmm"], "experiments.em_gmm cannot be planned"),
                        (["plan", "gpt2", "--", SMOKE, "--config.n_head=3"], "not divisible by n_head 3")]:
    done = run_python(["-m", "launch", *args])
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)


def test_advice_names_settings_that_fit():
  summary = {"peak_bytes": 100e9, "params_bytes": 10e9, "opt_state_bytes": 20e9, "other_state_bytes": 0,
             "temp_bytes": 60e9, "devices": 8, "mesh": {"data": 8, "fsdp": 1, "tensor": 1}, "grad_accum": 1}
  lines = plan_lib.advice(summary, plan_lib.ACCELERATORS["H100"])
  assert lines[0].startswith("--config.mesh.fsdp=8 --config.mesh.data=1") and "30.00 GB -> 3.75 GB" in lines[0]
  assert lines[1].startswith("--config.grad_accum=2")
  assert plan_lib.advice({**summary, "peak_bytes": 50e9}, plan_lib.ACCELERATORS["H100"]) == []


def test_flops_count_every_scanned_block():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from research.models import gpt2, layers  # pylint: disable=import-outside-toplevel
  from research.train import monitor  # pylint: disable=import-outside-toplevel

  tokens = jnp.zeros((2, 16), jnp.int32)

  def flops(scan: bool, unrolled: bool) -> float:
    model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=40, n_positions=16, n_embd=24, n_layer=3, n_head=2,
                                      scan_layers=scan))
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)
    step = jax.jit(jax.grad(lambda p: model.apply(p, tokens).astype(jnp.float32).sum()))
    if not unrolled:
      return monitor.step_flops(step.lower(params))
    with layers.unrolled_block_scans():
      return monitor.step_flops(step.lower(params))

  loop = flops(False, False)
  assert flops(True, True) == pytest.approx(loop, rel=1e-3)  # all but a few elementwise ops of the slicing
  assert flops(True, False) < 0.7 * loop  # XLA counts the scan's body once
