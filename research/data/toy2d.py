"""Generated 2D data for GAN mode-coverage studies (VEEGAN / PacGAN setups)."""

import numpy as np

RING8_MODES = np.stack([np.cos(2 * np.pi * np.arange(8) / 8), np.sin(2 * np.pi * np.arange(8) / 8)], -1)
GRID25_MODES = np.stack(np.meshgrid(np.arange(-4.0, 5.0, 2.0), np.arange(-4.0, 5.0, 2.0), indexing="ij"),
                        -1).reshape(-1, 2)

# name -> (mode centres (M, 2), per-coordinate standard deviation); swissroll has no modes.
MIXTURES = {"ring8": (RING8_MODES, 0.01), "grid25": (GRID25_MODES, 0.05)}
NAMES = ("ring8", "grid25", "swissroll")


def generate(name: str, n: int, seed: int) -> dict[str, np.ndarray]:
  """Draws `n` points of a toy distribution.

  Args:
    name: one of NAMES.
    n: number of points.
    seed: numpy seed (fixed per split by the TFDS builder).

  Returns:
    {'point': float32 (n, 2), 'mode': int32 (n,)} where mode is the mixture component
    (-1 for swissroll).
  """
  rng = np.random.default_rng(seed)
  if name in MIXTURES:
    modes, std = MIXTURES[name]
    mode = rng.integers(0, len(modes), size=n)
    point = modes[mode] + std * rng.standard_normal((n, 2))
    return {"point": point.astype(np.float32), "mode": mode.astype(np.int32)}
  if name == "swissroll":
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    point = np.stack([t * np.cos(t), t * np.sin(t)], -1) / 5.0 + 0.1 * rng.standard_normal((n, 2))
    return {"point": point.astype(np.float32), "mode": np.full(n, -1, np.int32)}
  raise ValueError(f"unknown toy2d config {name!r}; choose one of: {', '.join(NAMES)}")
