"""research.host_memory: after `import research`, a compiled step reuses its temporary memory
instead of page-faulting it in anew at every call (and RESEARCH_SYSTEM_MALLOC=1 keeps glibc's way)."""

import json
import os
import subprocess
import sys

import pytest

CODE = """
import json, resource
import research
import jax, jax.numpy as jnp

@jax.jit
def step(a, b, c):  # a (8192, 8192) temporary of 256 MB that the output does not keep
  return jnp.sum(jnp.tanh(a @ b) @ c)

a, b, c = jnp.ones((8192, 64)) * 1e-2, jnp.ones((64, 8192)) * 1e-2, jnp.ones((8192, 8))
step(a, b, c).block_until_ready()
step(a, b, c).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  step(a, b, c).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"applied": research.host_memory.keep_freed_memory(), "faults": faults}))
"""


def _faults(opt_out: bool) -> dict:
  env = dict(os.environ)
  env.pop("RESEARCH_SYSTEM_MALLOC", None)
  if opt_out:
    env["RESEARCH_SYSTEM_MALLOC"] = "1"
  proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_compiled_step_reuses_its_temporaries():
  kept, system = _faults(opt_out=False), _faults(opt_out=True)
  assert kept["applied"] and not system["applied"]
  # 256 MB of temporaries is 65,536 pages of 4 KiB: glibc's defaults fault them in at every call.
  assert system["faults"] > 10_000, system
  assert kept["faults"] < 1_000, kept
