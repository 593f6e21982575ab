"""Tests for prompt_jax.data.root."""

import os
from unittest import mock

from absl.testing import absltest

from prompt_jax.data import root as data_root_lib


class DataRootTest(absltest.TestCase):

  def test_env_var_overrides(self):
    tmp = self.create_tempdir().full_path
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: tmp}):
      self.assertEqual(str(data_root_lib.data_root()), tmp)

  def test_missing_dir_names_path_and_env_var(self):
    with mock.patch.dict(os.environ, {data_root_lib.ENV_VAR: "/nonexistent/d"}):
      with self.assertRaisesRegex(
          FileNotFoundError, "/nonexistent/d.*PROMPT_JAX_DATA_ROOT"
      ):
        data_root_lib.data_root()

  def test_default_has_t5_vocab(self):
    self.assertTrue((data_root_lib.data_root() / "vocab/t5_spiece.model").is_file())


if __name__ == "__main__":
  absltest.main()
