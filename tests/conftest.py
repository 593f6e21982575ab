"""Session setup: 8 fake CPU devices for JAX, quiet TF, shared fixtures.

The environment is set at import time, before any test module imports jax.
"""

import os
import sys

if "jax" in sys.modules:
  raise RuntimeError("jax was imported before tests/conftest.py set XLA_FLAGS.")
_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG
  ).strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # In case TF touches a GPU.

import pathlib  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from prompt_jax.data import root as data_root_lib  # pylint: disable=g-import-not-at-top

# absltest helpers (create_tempdir, ...) read flags; pytest never parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


def pytest_collection_finish(session):
  """Hides GPUs from TensorFlow if a test module imported it (seqio does)."""
  del session
  tf = sys.modules.get("tensorflow")
  if tf is not None:
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF devices already initialized.
      pass


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  """The offline data root (`PROMPT_JAX_DATA_ROOT` or `../shared/data`)."""
  try:
    return data_root_lib.data_root()
  except FileNotFoundError as e:
    pytest.fail(str(e), pytrace=False)
