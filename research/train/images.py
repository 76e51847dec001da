"""PNG pictures of samples: image grids and 2D scatter plots."""

import json
import os

import numpy as np

MAX_GRID_IMAGES = 100  # a 10 x 10 grid: larger ones are too small to look at
# What the rows of a picture are, under its title.
PICTURE_NOTES = {"reconstructions": "rows: test images, then their reconstructions\n"
                                    "(denoising AE: clean, corrupted, denoised)"}


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """Tiles (N, H, W, C) images in [0, 1] into one (rows*(H+pad), cols*(W+pad), C) uint8 image."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, h, w, c = images.shape
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  grid = np.ones((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return (grid * 255).round().astype(np.uint8)


def save_png(path: str, array, title: str | None = None) -> str:
  """Writes images (N, H, W, C) as an upscaled grid, or points (N, 2) as a scatter plot."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  array = np.asarray(array)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if array.ndim == 4:
    grid = image_grid(array)
    fig, ax = plt.subplots(figsize=(6, 6 * grid.shape[0] / grid.shape[1]))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.axis("off")
  elif array.ndim == 2 and array.shape[1] == 2:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(array[:, 0], array[:, 1], s=2, alpha=0.5)
    ax.set_aspect("equal")
  else:
    raise ValueError(f"cannot draw an array of shape {array.shape}: expected (N, H, W, C) or (N, 2)")
  if title:
    ax.set_title(title, fontsize=10 if "\n" in title else None)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def sample_kind(value) -> str:
  """"images" (N, H, W, C), "points" (N, 2) or "text" (a string or a sequence of strings)."""
  if isinstance(value, str) or (isinstance(value, (list, tuple)) and value and all(
      isinstance(v, (str, bytes)) for v in value)):
    return "text"
  array = np.asarray(value)
  if array.ndim == 4:
    return "images"
  if array.ndim == 2 and array.shape[1] == 2:
    return "points"
  raise ValueError(f"cannot write a sample of shape {array.shape}: expected images (N, H, W, C), points (N, 2) "
                   "or text")


def write_samples(workdir: str, samples, writer=None, step: int = 0, notes=None) -> list[str]:
  """Writes each named sample as files a person (and other tools) can read.

  images -> `<name>.png` (a grid of the first MAX_GRID_IMAGES, large enough to see) +
  `<name>.npz` (all of them: `images`, float32 in [0, 1], NHWC), and the grid as a
  TensorBoard image; points -> `<name>.png` (a scatter) + `<name>.npz`
  (`points`); text -> `<name>.txt`, one sample per block. `notes` ({name: line}, with
  PICTURE_NOTES) adds a line under a picture's title saying what its rows or columns are.

  Returns:
    The paths written.
  """
  paths = []
  for name, value in samples.items():
    kind = sample_kind(value)
    if kind == "text":
      texts = [value] if isinstance(value, str) else [v.decode() if isinstance(v, bytes) else v for v in value]
      path = os.path.join(workdir, f"{name}.txt")
      with open(path, "w") as f:
        f.write("\n\n".join(f"--- sample {i} ---\n{t}" for i, t in enumerate(texts)) + "\n")
      paths.append(path)
      continue
    array = np.asarray(value, np.float32)
    shown = array[:MAX_GRID_IMAGES] if kind == "images" else array
    title = f"{name} (step {step})" if len(shown) == len(array) else \
        f"{name} (step {step}; the first {len(shown)} of {len(array)})"
    note = {**PICTURE_NOTES, **(notes or {})}.get(name)
    if note:
      title += "\n" + note
    paths.append(save_png(os.path.join(workdir, f"{name}.png"), shown, title=title))
    npz = os.path.join(workdir, f"{name}.npz")
    np.savez_compressed(npz, **{kind: np.clip(array, 0.0, 1.0) if kind == "images" else array})
    paths.append(npz)
    if kind == "images" and writer is not None:
      writer.write_images(step, {name: image_grid(shown)[None]})
  return paths


def _scalar_history(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{tag: (steps, values)} from a scalars.jsonl; a step logged again (after a resume) keeps its last value."""
  by_tag: dict[str, dict[int, float]] = {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      step = row.pop("step", None)
      if step is None:
        continue
      for tag, value in row.items():
        by_tag.setdefault(tag, {})[int(step)] = float(value)
  return {tag: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for tag, v in by_tag.items()}


def write_curves(workdir: str, scalars_file: str = "scalars.jsonl", max_panels: int = 12) -> str | None:
  """Draws `workdir/curves.png`: the training loss, learning rate and evaluation metrics against the step.

  Returns the PNG's path, or None when nothing was logged.
  """
  path = os.path.join(workdir, scalars_file)
  if not os.path.exists(path):
    return None
  history = _scalar_history(path)
  # The loss and the evaluation metrics first; norms and rates after them, up to max_panels.
  order = lambda tag: (0 if "loss" in tag else 1 if tag.startswith("eval/") else 2 if "learning_rate" in tag else 3, tag)
  # A series that never moved (real data's own score beside the samples') says nothing over steps.
  moving = [tag for tag, (steps, values) in history.items()
            if len(steps) and (len(values) == 1 or np.ptp(values) > 0) and not tag.endswith("_se")]
  tags = sorted(moving, key=order)[:max_panels]
  if not tags:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  columns = min(3, len(tags))
  rows = -(-len(tags) // columns)
  width, height = 4 * columns, 2.8 * rows
  fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
  # Fixed margins in inches (room for the tick labels, the step label and the titles): matplotlib's tight
  # layout measured every tick label first, which took longer than drawing the figure.
  fig.subplots_adjust(left=0.65 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                      wspace=0.8 / 3.15, hspace=0.85 / 1.95)
  for ax, tag in zip(axes.flat, tags):
    steps, values = history[tag]
    ax.plot(steps, values, marker="o" if len(steps) < 12 else None, markersize=3)
    if np.all(values > 0) and values.max() / values.min() > 100:
      ax.set_yscale("log")
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(tags):]:
    ax.axis("off")
  out = os.path.join(workdir, "curves.png")
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out
