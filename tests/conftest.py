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


@pytest.fixture(scope="session", autouse=True)
def xla_compilation_cache(tmp_path_factory) -> pathlib.Path:
  """One persistent XLA compilation cache for this session's processes.

  Shared by the xdist workers and every `python -m prompt_jax.main` child a
  test starts (through the environment), so a program compiled once (a
  train step of the same tiny model, say) is loaded from disk, not compiled
  again. Every distinct program is still compiled once per session.
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # The session's directory, above the workers' own.
  path = root / "xla_compilation_cache"
  # A size limit makes jax lock the directory around reads and writes.
  max_size = 2 << 30
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(max_size)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_compilation_cache_max_size", max_size)
  compilation_cache.reset_cache()  # Picks up the new directory.
  return path


@pytest.fixture(scope="session")
def data_root() -> pathlib.Path:
  """The offline data root (`PROMPT_JAX_DATA_ROOT` or `../shared/data`)."""
  try:
    return data_root_lib.data_root()
  except FileNotFoundError as e:
    pytest.fail(str(e), pytrace=False)
