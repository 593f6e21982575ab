"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): the
`Adapters` method.

`bottleneck` holds one adapter's equation, parameters and inits, `sites`
the configs ('houlsby', 'pfeiffer'), the blocks they select and the seams
that run the adapters, and `method.Adapters` the trainable tree behind the
`Method` interface.
"""

from prompt_jax.methods.adapters.method import Adapters
