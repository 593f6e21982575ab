"""Checks that tests/conftest.py gives every test 8 fake CPU devices."""

from absl.testing import absltest
import jax


class ConftestDevicesTest(absltest.TestCase):

  def test_eight_cpu_devices(self):
    self.assertLen(jax.devices(), 8)
    self.assertEqual(jax.devices()[0].platform, "cpu")

