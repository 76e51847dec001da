"""The TensorBoard writer: TF2's event layout read back by TensorBoard's own reader, and no TensorFlow import."""

import io

import numpy as np
from PIL import Image

from conftest import run_python


def test_scalars_and_images_read_back_as_tensorboard_reads_tf_summaries(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  from research.train import tensorboard  # pylint: disable=import-outside-toplevel
  writer = tensorboard.SummaryWriter(str(tmp_path))
  grid = np.random.default_rng(0).integers(0, 256, (1, 5, 7, 1), dtype=np.uint8)
  for step in (1, 2):
    writer.write_scalars(step, {"loss": 0.5 * step, "eval/fid": 3.0})
  writer.write_images(2, {"samples": grid})
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  assert [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss")] == [(1, 0.5),
                                                                                                        (2, 1.0)]
  assert acc.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
  (image,) = acc.Tensors("samples")
  width, height, png = tensor_util.make_ndarray(image.tensor_proto)
  assert (int(width), int(height)) == (7, 5) and acc.SummaryMetadata("samples").plugin_data.plugin_name == "images"
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), grid[0, ..., 0])


def test_writing_events_does_not_import_tensorflow(tmp_path):
  code = ("import sys, numpy as np; from research.train import monitor; w = monitor.make_writer(sys.argv[1]); "
          "w.write_scalars(1, {'loss': 1.0}); w.write_images(1, {'s': np.zeros((1, 4, 4, 3), np.uint8)}); w.close(); "
          "print('tensorflow' in sys.modules)")
  proc = run_python(["-c", code, str(tmp_path)])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False"
  assert any(p.name.startswith("events.out.tfevents.") for p in tmp_path.iterdir())
