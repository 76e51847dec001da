"""TensorBoard event files without TensorFlow: scalars and image grids, as TF2's tf.summary writes them.

The loop's only use of TensorFlow was the summary writer, and importing TensorFlow costs every
run several seconds before its first step. These events are TF2's own layout (a float32 scalar
tensor under the "scalars" plugin; an image as the string tensor [width, height, PNG] under the
"images" plugin), in TFRecord files written with the `tensorboard` package's record writer, so
TensorBoard and its EventAccumulator read them as they read tf.summary's.
"""

import io
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

SCALARS_FILE = "scalars.jsonl"  # {"step": s, tag: value, ...} per write, appended across resumes


class SummaryWriter:
  """`write_scalars(step, {tag: value})`, `write_images(step, {tag: (N, H, W, C) uint8})`, `flush()`, `close()`."""

  def __init__(self, logdir: str):
    # The record writer on a plain file: tensorboard's EventFileWriter opens files through
    # tf.io.gfile, which imports TensorFlow whenever it is installed.
    from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorboard.summary.writer.record_writer import RecordWriter  # pylint: disable=import-outside-toplevel
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.0"
    self._records = RecordWriter(open(os.path.join(logdir, name), "wb"))  # pylint: disable=consider-using-with
    self._records.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    # The scalars again as JSON lines, which the training curves (curves.png) are drawn from.
    self._scalars = open(os.path.join(logdir, SCALARS_FILE), "a")  # pylint: disable=consider-using-with

  def _write(self, step: int, values: list) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
    event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
    self._records.write(event.SerializeToString())

  @staticmethod
  def _value(tag: str, plugin: str, tensor) -> Any:
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))
    return summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
    values = [self._value(tag, "scalars", tensor_util.make_tensor_proto(np.float32(value)))
              for tag, value in scalars.items()]
    if values:
      self._write(step, values)
      row = {tag: float(value) for tag, value in scalars.items() if np.isfinite(float(value))}
      self._scalars.write(json.dumps({"step": int(step), **row}) + "\n")

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      if batch.dtype != np.uint8:
        batch = (np.clip(batch, 0.0, 1.0) * 255).round().astype(np.uint8)
      height, width = batch.shape[1:3]
      encoded = [str(width).encode(), str(height).encode()]
      for image in batch:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
      values.append(self._value(tag, "images", tensor_util.make_tensor_proto(np.array(encoded, dtype=object))))
    if values:
      self._write(step, values)

  def flush(self) -> None:
    self._records.flush()
    self._scalars.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()
    if not self._scalars.closed:
      self._scalars.close()


class NullWriter:
  """The writer of processes other than 0: nothing is written."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    del step, scalars

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
