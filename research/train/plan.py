"""Plan before you rent: a run's training step built and compiled for N devices, never run.

    summary = research.train.plan.plan(task, config, batch)   # batch: one step's host arrays (zeros do)
    print(research.train.plan.report(summary, accelerators=("H100",), mfu=0.4))

The step is the loop's own (research.train.members.Engine, the mesh and shardings of
`config.mesh`), lowered and compiled on abstract arrays: no parameter is allocated, so a
675M-parameter model plans on a laptop's CPU with simulated devices. What comes out:
parameters, model FLOPs per step (XLA's cost analysis of the step without microbatching, as the
loop counts them), per-device bytes of the parameters, the optimizer state and the rest of the
state (from each array's sharded shape), XLA's memory analysis of the compiled step (argument,
output and temporary bytes per device), the compile time, and at a stated MFU on named
accelerators the step time and the time to `config.steps`. A plan that does not fit a named
accelerator's memory says so and names the settings that shrink what does not fit.

The state's bytes per device are exact. The temporaries are the CPU compiler's buffer assignment
and overstate an accelerator's, often by several times: XLA:CPU computes bfloat16 math in
float32, fuses less, and runs the reference attention that materialises every score matrix
where a GPU runs a fused kernel. So "the step's XLA:CPU peak would not fit" is a warning to
check on one device, not a verdict; the advice lines say which settings shrink which part.
"""

import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np

from research.train import monitor
from research.train import parallel
from research.train.members import Engine


class Accelerator(NamedTuple):
  """A device a plan is priced on: dense bf16 peak and memory per device, and where the figures come from."""

  peak_flops: float
  memory_bytes: float
  source: str


ACCELERATORS = {
    "H100": Accelerator(989e12, 80e9, "NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16, 80 GB HBM3"),
    "A100": Accelerator(312e12, 80e9, "NVIDIA A100 datasheet: 312 TFLOP/s dense BF16, 80 GB HBM2e"),
    "TPU v5e": Accelerator(197e12, 16e9, "Cloud TPU v5e documentation: 197 TFLOP/s BF16, 16 GiB HBM2 per chip"),
    "TPU v5p": Accelerator(459e12, 95e9, "Cloud TPU v5p documentation: 459 TFLOP/s BF16, 95 GiB HBM2e per chip"),
}


def _device_bytes(tree) -> int:
  """Bytes per device of an abstract tree (jax.ShapeDtypeStruct leaves with shardings): each leaf's shard."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def plan(task, config, batch) -> dict[str, Any]:
  """Builds and compiles one training step of `task` under `config` on this process's devices.

  Args:
    task: the family's research.train.Task.
    config: the run's config (research.train.config.base_config fields; `mesh` sets the layout).
    batch: one step's global batch as host arrays (their shapes and dtypes are what matter).

  Returns:
    A dict: devices, mesh, parameters, flops_per_step, per-device bytes (params_bytes,
    opt_state_bytes, other_state_bytes; argument_bytes, output_bytes, temp_bytes from XLA's
    memory analysis, peak_bytes = argument + output + temp - aliased), compile_s, steps.
  """
  engine = Engine(task, config)
  mesh = parallel.make_mesh(config.mesh)
  layout = engine.layout(mesh, batch)
  keys = engine.keys()
  replicated = parallel.replicated(mesh)
  shardings = layout.batch if isinstance(layout.batch, type(batch)) else jax.tree.map(lambda _: layout.batch, batch)
  abstract_batch = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=s),
                                batch, shardings)
  step = jax.jit(lambda state, b: engine.step(state, b, keys), donate_argnums=0,
                 in_shardings=(layout.state, layout.batch), out_shardings=(layout.state, replicated))
  t0 = time.perf_counter()
  compiled = step.lower(layout.abstract, abstract_batch).compile()
  compile_s = time.perf_counter() - t0
  counted = jax.jit(lambda state, b: engine.counted_step(state, b, keys))
  flops = monitor.step_flops(counted.lower(layout.abstract, abstract_batch))
  memory = compiled.memory_analysis()
  abstract = layout.abstract
  params_bytes = _device_bytes(abstract.params)
  opt_bytes = _device_bytes(abstract.opt_state)
  argument = int(getattr(memory, "argument_size_in_bytes", 0) or 0)
  output = int(getattr(memory, "output_size_in_bytes", 0) or 0)
  temp = int(getattr(memory, "temp_size_in_bytes", 0) or 0)
  alias = int(getattr(memory, "alias_size_in_bytes", 0) or 0)
  return {
      "devices": jax.device_count(),
      "mesh": dict(mesh.shape),
      "parameters": int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(abstract.params))),
      "flops_per_step": flops,
      "params_bytes": params_bytes,
      "opt_state_bytes": opt_bytes,
      "other_state_bytes": _device_bytes(abstract) - params_bytes - opt_bytes,
      "argument_bytes": argument,
      "output_bytes": output,
      "temp_bytes": temp,
      "peak_bytes": argument + output + temp - alias,
      "compile_s": round(compile_s, 2),
      "steps": int(config.steps),
      "batch_size": int(config.batch_size),
      "grad_accum": int(config.grad_accum),
  }


def _gb(n: float) -> str:
  return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.1f} s"
  if seconds < 2 * 3600:
    return f"{seconds / 60:.1f} min"
  if seconds < 3 * 86400:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.1f} days"


def advice(summary: dict[str, Any], accelerator: Accelerator) -> list[str]:
  """Settings that bring a plan that does not fit `accelerator`'s memory within it (empty when it fits)."""
  budget = accelerator.memory_bytes
  if summary["peak_bytes"] <= budget:
    return []
  state = summary["params_bytes"] + summary["opt_state_bytes"] + summary["other_state_bytes"]
  fsdp = summary["mesh"].get(parallel.FSDP_AXIS, 1)
  out = []
  if summary["devices"] > fsdp:
    # The state is sharded over fsdp; the rest of the devices hold copies of it.
    sharded = state * fsdp / summary["devices"]
    out.append(f"--config.mesh.fsdp={summary['devices']} --config.mesh.data=1 shards the parameters and the "
               f"optimizer state over all {summary['devices']} devices: {_gb(state)} -> {_gb(sharded)} per device")
  temp = summary["temp_bytes"]
  if temp > budget / 4:
    accum = summary["grad_accum"]
    out.append(f"--config.grad_accum={2 * accum} halves the activations of a microbatch "
               f"(temporaries {_gb(temp)} -> about {_gb(temp / 2)}); --config.remat=block (where the model has it) "
               "recomputes them in the backward pass instead")
  return out


def report(summary: dict[str, Any], accelerators=tuple(ACCELERATORS), mfu: float = 0.4, title: str = "") -> str:
  """The plan as text: the step's figures, then per accelerator its time at `mfu` and whether it fits."""
  s = summary
  lines = [title] if title else []
  lines += [
      f"devices {s['devices']}, mesh {s['mesh']}; batch {s['batch_size']} (grad_accum {s['grad_accum']}); "
      f"{s['steps']:,} steps",
      f"parameters {s['parameters']:,}",
      f"model FLOPs per step {s['flops_per_step']:.3e}" if s["flops_per_step"] else "model FLOPs per step: unknown",
      f"per device: parameters {_gb(s['params_bytes'])}, optimizer state {_gb(s['opt_state_bytes'])}, "
      f"rest of the state {_gb(s['other_state_bytes'])}",
      f"per device (XLA:CPU memory analysis of the step): arguments {_gb(s['argument_bytes'])}, outputs "
      f"{_gb(s['output_bytes'])}, temporaries {_gb(s['temp_bytes'])}, peak about {_gb(s['peak_bytes'])}",
      f"compile {s['compile_s']:.1f} s",
  ]
  for name in accelerators:
    acc = ACCELERATORS[name]
    if s["flops_per_step"]:
      step_s = s["flops_per_step"] / (s["devices"] * acc.peak_flops * mfu)
      timing = f"step {step_s * 1e3:.3g} ms, {s['steps']:,} steps {_duration(step_s * s['steps'])} at MFU {mfu:.0%}"
    else:
      timing = "no FLOP count"
    state = s["params_bytes"] + s["opt_state_bytes"] + s["other_state_bytes"]
    state_fits = "fits" if state <= acc.memory_bytes else "does NOT fit"
    step_fits = "fits" if s["peak_bytes"] <= acc.memory_bytes else "would not fit"
    lines.append(f"{name} x {s['devices']}: {timing}; the state ({_gb(state)} per device) {state_fits} "
                 f"{_gb(acc.memory_bytes)}; the step's XLA:CPU peak {step_fits}")
    lines += [f"  try {line}" for line in advice(s, acc)]
  lines.append("sources: " + "; ".join(f"{name}: {ACCELERATORS[name].source}" for name in accelerators))
  return "\n".join(lines)
