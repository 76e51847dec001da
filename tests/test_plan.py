"""`python -m launch plan`: the loop's step compiled for N simulated devices, never run, with its figures."""

import json

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
