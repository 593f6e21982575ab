"""Tests for prompt_jax.icl.calibration: hand-computed calibration and PMI.

Contextual calibration must flip predictions exactly as W = diag(p_cf)^-1
says; p_cf averages per-row NORMALISED content-free distributions; PMI is a
plain difference of log-likelihoods.
"""

from absl.testing import absltest
import numpy as np

from prompt_jax.icl import calibration


class CalibrationTest(absltest.TestCase):

  def test_content_free_inputs_are_zhao_et_al(self):
    self.assertEqual(calibration.CONTENT_FREE_INPUTS, ("N/A", "", "[MASK]"))

  def test_prediction_flips_as_the_formula_says(self):
    scores = np.log([[0.6, 0.4]])
    p_cf = np.array([0.8, 0.2])
    # W q = [0.6 / 0.8, 0.4 / 0.2] = [0.75, 2.0]; sum 2.75.
    np.testing.assert_allclose(calibration.calibrate(scores, p_cf),
                               [[0.75 / 2.75, 2.0 / 2.75]], rtol=1e-12)
    self.assertEqual(int(np.argmax(scores)), 0)
    np.testing.assert_array_equal(
        calibration.calibrated_predictions(scores, p_cf), [1])

  def test_prediction_kept_when_evidence_outweighs_the_bias(self):
    # q = [0.9, 0.1] / [0.8, 0.2] = [1.125, 0.5]: still option 0.
    scores = np.log([[0.9, 0.1], [0.6, 0.4]])
    np.testing.assert_array_equal(
        calibration.calibrated_predictions(scores, [0.8, 0.2]), [0, 1])

  def test_uniform_p_cf_is_identity_and_shift_invariant(self):
    scores = np.array([[-3.0, -1.0, -2.0], [-0.5, -4.0, -0.7]])
    expected = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        calibration.calibrate(scores - 100.0, np.full(3, 1 / 3)), expected,
        rtol=1e-12)

  def test_content_free_probs_normalises_each_row_then_averages(self):
    # Row 0 has total mass 0.1 (-> [0.9, 0.1]), row 1 is [0.5, 0.5], row 2
    # [0.7, 0.3]: mean [0.7, 0.3]. Averaging raw probabilities instead
    # would give [1.29, 0.81] / 2.1 = [0.614.., 0.385..].
    scores = np.log([[0.09, 0.01], [0.5, 0.5], [0.7, 0.3]])
    np.testing.assert_allclose(calibration.content_free_probs(scores),
                               [0.7, 0.3], rtol=1e-12)

  def test_pmi_is_the_hand_computed_difference(self):
    conditional = np.array([[-1.0, -2.0, -4.0], [-3.0, -0.5, -1.5]])
    unconditional = np.array([-0.5, -3.0, -1.0])
    np.testing.assert_allclose(
        calibration.pmi_scores(conditional, unconditional),
        [[-0.5, 1.0, -3.0], [-2.5, 2.5, -0.5]])
    per_example = np.array([[-2.0, -1.0, -1.0], [0.0, 0.0, -3.0]])
    np.testing.assert_allclose(
        calibration.pmi_scores(conditional, per_example),
        [[1.0, -1.0, -3.0], [-3.0, -0.5, 1.5]])

  def test_bad_input_is_a_one_line_error(self):
    cases = [
        (lambda: calibration.calibrate([[0.0, 0.0]], [0.5, 0.3, 0.2]),
         "p_cf has 3 options"),
        (lambda: calibration.calibrate([[0.0, 0.0]], [1.0, 0.0]),
         "must be > 0"),
        (lambda: calibration.content_free_probs([[np.nan, 0.0]]), "NaN"),
        (lambda: calibration.content_free_probs([0.0, 0.0]), "2-D"),
        (lambda: calibration.pmi_scores([[0.0, 0.0]], [0.0, 0.0, 0.0]),
         "unconditional must be"),
    ]
    for fn, message in cases:
      with self.assertRaisesRegex(ValueError, message) as ctx:
        fn()
      self.assertNotIn("\n", str(ctx.exception))


if __name__ == "__main__":
  absltest.main()
