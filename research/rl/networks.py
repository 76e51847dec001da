"""The networks of the deep RL algorithms: an actor-critic (PPO, A2C) and a Q-network (DQN).

Both take flat observations through tanh/ReLU MLPs, or image observations (MinAtar's
(10, 10, channels) grids) through the small convolutional torso of Young & Tian (2019):
one 3x3 convolution with 16 channels, ReLU, flattened.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

TORSOS = ("mlp", "conv", "linear")


def orthogonal(scale: float = 1.0) -> nn.initializers.Initializer:
  """Flax's `nn.initializers.orthogonal` (the same matrix up to rounding), without a LAPACK QR.

  The Q of a Gaussian matrix's QR with R's diagonal made positive is what Gram-Schmidt on its
  columns gives; here classical Gram-Schmidt, applied twice per column for float32 accuracy, in
  a `lax.fori_loop` of matrix-vector products. The training program is vmapped over seeds, and
  a vmapped QR becomes a batched LAPACK call that jaxlib fans out over XLA's CPU thread pool; on
  two cores two such calls can wait on each other forever, hanging the run at initialisation.
  Convolution kernels (h, w, in, out) are initialised as the (h * w * in, out) matrix.
  """

  def init(key, shape, dtype=jnp.float32):
    if len(shape) < 2:
      raise ValueError(f"orthogonal initialisation needs a kernel of 2 or more dimensions, got shape {shape}")
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    m, n = (cols, rows) if rows < cols else (rows, cols)
    a = jax.random.normal(key, (m, n), jnp.float32)

    def column(j, q):
      v = a[:, j]
      for _ in range(2):  # "twice is enough" (Giraud et al. 2005); unfilled columns of q are zero
        v = v - q @ (q.T @ v)
      return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, n, column, jnp.zeros((m, n), jnp.float32))
    return (scale * (q.T if rows < cols else q)).reshape(shape).astype(dtype)

  return init


class ConvTorso(nn.Module):
  """MinAtar's torso: (..., H, W, C) -> (..., H * W * 16) after one 3x3 convolution and a ReLU."""

  features: int = 16

  @nn.compact
  def __call__(self, obs: jax.Array) -> jax.Array:
    batch_shape = obs.shape[:-3]
    x = obs.reshape((-1,) + obs.shape[-3:]).astype(jnp.float32)  # (N, H, W, C)
    x = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID", kernel_init=orthogonal(np.sqrt(2.0)))(x))
    return x.reshape(batch_shape + (-1,))  # (..., (H - 2) * (W - 2) * features)


class ActorCritic(nn.Module):
  """Separate networks for the policy logits and the state value.

  "mlp": two tanh hidden layers each. "conv": ConvTorso, then one ReLU hidden layer each.
  Orthogonal initialisation (`orthogonal`) with gain sqrt(2) for hidden layers, 0.01 for the policy head
  (near-uniform initial policy) and 1 for the value head, zero biases.
  """

  num_actions: int
  hidden_size: int = 64
  torso: str = "mlp"

  def _body(self, obs: jax.Array, name: str) -> jax.Array:
    hidden_init = orthogonal(np.sqrt(2.0))
    if self.torso == "conv":
      x = ConvTorso(name=f"{name}_torso")(obs)
      return nn.relu(nn.Dense(self.hidden_size, kernel_init=hidden_init, name=f"{name}_0")(x))
    x = obs
    for i in range(2):
      x = nn.tanh(nn.Dense(self.hidden_size, kernel_init=hidden_init, name=f"{name}_{i}")(x))
    return x

  @nn.compact
  def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Maps observations (..., obs_dim) or (..., H, W, C) to (logits (..., num_actions), value (...))."""
    logits = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01), name="actor_head")(self._body(obs, "actor"))
    value = nn.Dense(1, kernel_init=orthogonal(1.0), name="critic_head")(self._body(obs, "critic"))
    return logits, value[..., 0]


class QNetwork(nn.Module):
  """Action values Q(s, .) from a ReLU MLP (two hidden layers) or ConvTorso and one hidden layer.

  "linear": Q(s, .) is linear in the observation (no hidden layer): on one-hot observations of
  a tabular environment, a table.

  With `dueling` (Wang et al. 2016) the last hidden layer feeds a value stream V(s) and an
  advantage stream A(s, a), combined as Q = V + A - mean_a A, so that V and A are identifiable.
  Flax's default (LeCun normal) initialisation, as in the common DQN implementations.
  """

  num_actions: int
  hidden_size: int = 64
  torso: str = "mlp"
  dueling: bool = False

  @nn.compact
  def __call__(self, obs: jax.Array) -> jax.Array:
    """Maps observations (..., obs_dim) or (..., H, W, C) to Q values (..., num_actions)."""
    if self.torso == "linear":
      return nn.Dense(self.num_actions, name="q_head")(obs.astype(jnp.float32))
    if self.torso == "conv":
      x = nn.relu(nn.Dense(self.hidden_size, name="hidden_0")(ConvTorso(name="torso")(obs)))
    else:
      x = obs.astype(jnp.float32)
      for i in range(2):
        x = nn.relu(nn.Dense(self.hidden_size, name=f"hidden_{i}")(x))
    if not self.dueling:
      return nn.Dense(self.num_actions, name="q_head")(x)
    value = nn.Dense(1, name="value_head")(x)  # (..., 1)
    advantage = nn.Dense(self.num_actions, name="advantage_head")(x)  # (..., A)
    return value + advantage - advantage.mean(axis=-1, keepdims=True)
