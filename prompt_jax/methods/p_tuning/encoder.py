"""P-tuning's prompt encoder, PEFT 0.21.2's `PromptEncoder`, in plain JAX.

The encoder maps P trainable pseudo-token embeddings [P, H] to the prompt
[P, H] that enters the backbone (the "reparameterisation"; it exists at
training time only, the exported artifact is its output table).

Tree (kernels [in, out], the transpose of torch's `Linear.weight`):

  'MLP'  (PEFT: Linear(H, h), ReLU, Linear(h, h), ReLU, Linear(h, H)):
    embedding [P, H]
    mlp_head/dense_0 {kernel [H, h], bias [h]}
    mlp_head/dense_1 {kernel [h, h], bias [h]}
    mlp_head/dense_2 {kernel [h, H], bias [H]}
  'LSTM' (PEFT: a bidirectional `torch.nn.LSTM(H, h, num_layers)`, then
          Linear(2h, 2h), ReLU, Linear(2h, H)):
    embedding [P, H]
    lstm_head/layer_<k>/{forward,backward}/
      {w_ih [in_k, 4h], w_hh [h, 4h], b_ih [4h], b_hh [4h]}
      (in_0 = H, in_k = 2h; the gate blocks are torch's order i, f, g, o)
    mlp_head/dense_0 {kernel [2h, 2h], bias [2h]}
    mlp_head/dense_1 {kernel [2h, H], bias [H]}

h is `encoder_hidden_size` (PEFT's default: token_dim = H). Hidden sizes:

* PEFT 0.21.2 (read from peft/tuners/p_tuning/model.py): the LSTM has h
  units PER DIRECTION (output 2h) and `encoder_num_layers` layers (default
  2, dropout `encoder_dropout` between them, default 0), then the MLP head
  2h -> 2h -> H; the 'MLP' encoder is H -> h -> h -> H (three Linear layers,
  `encoder_num_layers` ignored).
* The original P-tuning code (THUDM/P-tuning, LAMA/p_tuning/
  prompt_encoder.py, read): `LSTM(hidden, hidden // 2, num_layers=2,
  bidirectional=True)` then `Linear(hidden, hidden), ReLU, Linear(hidden,
  hidden)` with hidden = the embedding dim H, i.e. H/2 units per direction.
  PEFT's LSTM layout with `encoder_hidden_size = H // 2` is exactly that
  network (2h = H). Its default `lstm_dropout` is 0.0 (LAMA/cli.py). Not
  verified here: the FewGLUE code's (PT-Fewshot) encoder sizes and any
  MLP-only encoder in the paper; the paper's text was not consulted.

Numerics follow torch: LSTM gates = x W_ih + b_ih + h W_hh + b_hh, split
i, f, g, o; c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o)
tanh(c'); the backward direction reads the sequence reversed; zero initial
states. Matmuls run at HIGHEST precision (the encoder is tiny), in fp32.

Initialisation is torch's default, as PEFT leaves it: embedding N(0, 1);
Linear weight and bias U(+-1/sqrt(fan_in)); every LSTM tensor
U(+-1/sqrt(h)).
"""

import math
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from prompt_jax import types
from prompt_jax.types import Array, PRNGKey, PyTree

MLP, LSTM = "MLP", "LSTM"
ENCODER_TYPES = (MLP, LSTM)
_HIGHEST = jax.lax.Precision.HIGHEST
# Every encoder weight is replicated: the prompt axes map to no mesh axis.
_ROWS, _FEATURES = types.PROMPT, types.PROMPT_EMBED


def check_type(encoder_type: str) -> None:
  """One-line error for an unknown encoder type."""
  if encoder_type not in ENCODER_TYPES:
    raise ValueError(f"P-tuning encoder_type {encoder_type!r}: expected one "
                     f"of {list(ENCODER_TYPES)}")


def _dense(fan_in: int, fan_out: int) -> dict[str, tuple]:
  """'/'-leaf -> (shape, init bound) of one Linear."""
  bound = 1.0 / math.sqrt(fan_in)
  return {"kernel": ((fan_in, fan_out), bound), "bias": ((fan_out,), bound)}


def _specs(encoder_type: str, length: int, token_dim: int, hidden: int,
           num_layers: int) -> dict[str, tuple]:
  """'/'-path -> (shape, init bound or None for N(0, 1)) of every leaf."""
  check_type(encoder_type)
  specs = {"embedding": ((length, token_dim), None)}
  if encoder_type == MLP:
    sizes = [token_dim, hidden, hidden, token_dim]
  else:
    bound = 1.0 / math.sqrt(hidden)
    for k in range(num_layers):
      width = token_dim if k == 0 else 2 * hidden
      for direction in ("forward", "backward"):
        path = f"lstm_head/layer_{k}/{direction}"
        specs |= {f"{path}/w_ih": ((width, 4 * hidden), bound),
                  f"{path}/w_hh": ((hidden, 4 * hidden), bound),
                  f"{path}/b_ih": ((4 * hidden,), bound),
                  f"{path}/b_hh": ((4 * hidden,), bound)}
    sizes = [2 * hidden, 2 * hidden, token_dim]
  for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
    for leaf, spec in _dense(fan_in, fan_out).items():
      specs[f"mlp_head/dense_{i}/{leaf}"] = spec
  return specs


def abstract(encoder_type: str, length: int, token_dim: int, hidden: int,
             num_layers: int) -> PyTree:
  """Boxed `ShapeDtypeStruct` tree (fp32; the P dim is PROMPT, a weight's
  first dim PROMPT_EMBED, its second unnamed: all replicated under the
  standard rules)."""
  flat = {}
  for path, (shape, _) in _specs(encoder_type, length, token_dim, hidden,
                                 num_layers).items():
    # A name may occur once per array: a matrix's second dim is unnamed.
    names = ((_ROWS, _FEATURES) if path == "embedding"
             else (_FEATURES, None)[:len(shape)])
    flat[path] = nn.LogicallyPartitioned(
        jax.ShapeDtypeStruct(shape, jnp.float32), names=names)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def init(rng: PRNGKey, encoder_type: str, length: int, token_dim: int,
         hidden: int, num_layers: int) -> PyTree:
  """torch's default init of PEFT's encoder (one key per leaf)."""
  specs = _specs(encoder_type, length, token_dim, hidden, num_layers)
  flat = {}
  for key, (path, (shape, bound)) in zip(
      jax.random.split(rng, len(specs)), sorted(specs.items())):
    if bound is None:
      flat[path] = jax.random.normal(key, shape, jnp.float32)
    else:
      flat[path] = jax.random.uniform(key, shape, jnp.float32, -bound, bound)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def _linear(x: Array, layer: PyTree) -> Array:
  """[..., in] -> [..., out]."""
  return jnp.dot(x, layer["kernel"], precision=_HIGHEST) + layer["bias"]


def mlp_head(x: Array, head: PyTree) -> Array:
  """Linear layers dense_0..dense_{n-1} with ReLU between: [P, in] -> [P, H]."""
  count = len(head)
  for i in range(count):
    x = _linear(x, head[f"dense_{i}"])
    if i < count - 1:
      x = jax.nn.relu(x)
  return x


def lstm_direction(x: Array, weights: PyTree, reverse: bool = False) -> Array:
  """One direction of one torch LSTM layer: x [P, in] -> h [P, h].

  Args:
    x: the layer's input sequence.
    weights: w_ih [in, 4h], w_hh [h, 4h], b_ih [4h], b_hh [4h] (gate blocks
      i, f, g, o as torch).
    reverse: run from the last step to the first (torch's `_reverse`).
  """
  hidden = weights["w_hh"].shape[0]
  x_gates = jnp.dot(x, weights["w_ih"], precision=_HIGHEST) + weights["b_ih"]

  def step(carry, xg):
    h, c = carry
    gates = xg + jnp.dot(h, weights["w_hh"], precision=_HIGHEST) + weights[
        "b_hh"]
    i, f, g, o = jnp.split(gates, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((hidden,), x_gates.dtype)
  _, hs = jax.lax.scan(step, (zeros, zeros), x_gates, reverse=reverse)
  return hs


def lstm_head(x: Array, head: PyTree, dropout: float = 0.0,
              rng: PRNGKey | None = None) -> Array:
  """Bidirectional multi-layer LSTM: [P, H] -> [P, 2h] (forward, backward
  concatenated per step, as torch's output). With `rng`, dropout `dropout`
  on every layer's output but the last (torch's `LSTM(dropout=)`)."""
  for k in range(len(head)):
    if k and rng is not None and dropout > 0.0:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, k), 1.0 - dropout,
                                  x.shape)
      x = jnp.where(keep, x / (1.0 - dropout), 0.0)
    layer = head[f"layer_{k}"]
    x = jnp.concatenate([lstm_direction(x, layer["forward"]),
                         lstm_direction(x, layer["backward"], reverse=True)],
                        axis=-1)
  return x


def encoder_type_of(params: PyTree) -> str:
  """'LSTM' if the tree has an LSTM head, else 'MLP' (from keys only)."""
  return LSTM if "lstm_head" in params else MLP


def apply(params: PyTree, dropout: float = 0.0,
          rng: PRNGKey | None = None) -> Array:
  """The prompt [P, H] (fp32) that the encoder makes of its embedding;
  `dropout` with `rng`: PEFT's `encoder_dropout` (between LSTM layers;
  the MLP encoder has none)."""
  x = params["embedding"].astype(jnp.float32)
  if encoder_type_of(params) == LSTM:
    x = lstm_head(x, params["lstm_head"], dropout, rng)
  return mlp_head(x, params["mlp_head"])


def count(tree: Any) -> int:
  """Number of scalars in a (possibly boxed, possibly abstract) tree."""
  leaves = jax.tree.leaves(flax.core.meta.unbox(tree))
  return sum(math.prod(leaf.shape) for leaf in leaves)
