"""The compile-time and memory benchmark of GPT-2's training step (experiments/bench/compile_memory.py)."""

import dataclasses
import json

from conftest import run_python
from experiments.bench import compile_memory
from research.models import gpt2

SMALL = gpt2.GPT2Config(vocab_size=64, n_positions=256, n_embd=64, n_layer=4, n_head=2)


def test_scanned_rematerialised_blocks_hold_fewer_temporary_bytes_where_activations_dominate():
  """At 4 blocks of 64 wide over 256 tokens the activations outweigh the stacked parameters' copies."""
  loop = compile_memory.step_memory(SMALL, batch_size=8, seq_len=256)
  scanned = compile_memory.step_memory(dataclasses.replace(SMALL, scan_layers=True, remat="block"), 8, 256)
  assert loop["argument_bytes"] == scanned["argument_bytes"] > 0  # the same parameters and optimizer state
  assert scanned["temp_bytes"] < 0.7 * loop["temp_bytes"]
  assert min(loop["compile_s"], scanned["compile_s"]) > 0


def test_report_and_bad_flags(tmp_path):
  args = ["-m", "experiments.bench.compile_memory", "--config=experiments/bench/compile_memory.py:smoke"]
  proc = run_python(args + [f"--outdir={tmp_path}", "--config.remat=none"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "compile_memory.json").read_text())
  assert [(r["scan_layers"], r["remat"]) for r in result["rows"]] == [(False, "none"), (True, "none")]
  assert result["rows"][0]["vs_loop_none"]["temp_bytes"] == 1.0
  assert "| True | none |" in (tmp_path / "compile_memory.md").read_text()
  for flag, message in [("--config.remat=full", "remat"), ("--config.scan_layers=maybe", "scan_layers"),
                        ("--config.size=2b", "unknown GPT-2 size '2b'"), ("--config.seq_len=0", "seq_len must be")]:
    proc = run_python(args + [f"--outdir={tmp_path / 'bad'}", flag])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and message in proc.stderr, (flag, proc.stderr)
  assert not (tmp_path / "bad").exists()
