"""Attention: FlashAttention equals the reference in value and gradient, in memory linear in T;
RoPE scores depend only on relative positions; ALiBi's slopes; grouped-query multi-head attention."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import attention as attn


def _qkv(t, s, h, hkv, d=16, b=2, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (b, t, h, d)), jax.random.normal(kk, (b, s, hkv, d)),
          jax.random.normal(kv, (b, s, hkv, d)))


CASES = [  # (T, S, heads, kv heads, causal, padding mask, alibi): lengths not multiples of the block (16)
    (37, 37, 4, 4, True, False, False),
    (37, 50, 4, 2, False, True, False),
    (29, 29, 4, 1, True, True, True),
    (16, 16, 2, 2, False, False, True),
    (5, 40, 2, 2, True, False, False),  # the last 5 positions of 40: decoding against a cache
]


BLOCKWISE = {"flash": attn.flash_attention, "dense": attn.dense_attention}


@pytest.mark.parametrize("implementation", list(BLOCKWISE))
@pytest.mark.parametrize("t,s,h,hkv,causal,masked,alibi", CASES)
def test_blockwise_attention_equals_the_reference_in_value_and_gradient(t, s, h, hkv, causal, masked, alibi,
                                                                        implementation):
  """FlashAttention (key blocks) and the dense attention (causal query blocks, its own backward)."""
  q, k, v = _qkv(t, s, h, hkv)
  mask = jax.random.bernoulli(jax.random.key(9), 0.7, (2, s)) if masked else None
  if masked:
    mask = mask.at[0].set(False)  # a row of queries with no valid key at all
  slopes = attn.alibi_slopes(h) if alibi else None
  kwargs = dict(causal=causal, mask=mask, alibi=slopes)
  flash_fn = lambda *a, **kw: BLOCKWISE[implementation](*a, block_size=16, **kw)
  ref = jax.jit(lambda q, k, v: attn.dot_product_attention(q, k, v, **kwargs))(q, k, v)
  flash = jax.jit(lambda q, k, v: flash_fn(q, k, v, **kwargs))(q, k, v)
  np.testing.assert_allclose(flash, ref, atol=2e-6)

  def gradient(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, **kwargs))), argnums=(0, 1, 2)))

  g_ref = gradient(attn.dot_product_attention)(q, k, v)
  g_flash = gradient(flash_fn)(q, k, v)
  for a, b in zip(g_flash, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("traced", [False, True])
def test_dense_attention_with_an_offset_equals_the_reference(traced):
  """Queries at positions 13.. of 40 keys: a static q_start splits them into causal blocks, a traced one does not."""
  q, k, v = _qkv(27, 40, 4, 2, seed=3)
  assert len(attn._dense_blocks(27, 40, True, 8, 13)) == 4  # pylint: disable=protected-access

  def run(fn):
    def loss(q, k, v, start):
      return jnp.sum(jnp.sin(fn(q, k, v, causal=True, q_start=start)))
    start = jnp.int32(13) if traced else 13
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=() if traced else (3,))(q, k, v, start)

  (value, grads) = run(lambda *a, **kw: attn.dense_attention(*a, block_size=8, **kw))
  (ref_value, ref_grads) = run(attn.dot_product_attention)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("t,s,h,hkv,causal,masked,alibi", CASES)
def test_attention_on_the_cache_layout_equals_the_reference(t, s, h, hkv, causal, masked, alibi):
  """The KV cache keeps (B, Hkv, S, D); attending there equals the reference on (B, S, Hkv, D)."""
  q, k, v = _qkv(t, s, h, hkv, seed=1)
  mask = jax.random.bernoulli(jax.random.key(4), 0.7, (2, s)).at[:, -1].set(True) if masked else None
  kwargs = dict(causal=causal, mask=mask, alibi=attn.alibi_slopes(h) if alibi else None, q_start=s - t)
  swap = lambda x: jnp.swapaxes(x, 1, 2)
  ours = attn.cached_attention(q, swap(k), swap(v), **kwargs)
  np.testing.assert_allclose(ours, attn.dot_product_attention(q, k, v, **kwargs), atol=2e-6)
  with pytest.raises(ValueError, match="cached k, v"):
    attn.cached_attention(q, k[:, :, :1], v[:, :, :1])


@pytest.mark.parametrize("causal", [False, True])
def test_reference_equals_jax_dot_product_attention(causal):
  q, k, v = _qkv(12, 12, 4, 2)
  mask = jax.random.bernoulli(jax.random.key(3), 0.8, (2, 12)).at[:, 0].set(True)
  ours = attn.dot_product_attention(q, k, v, causal=causal, mask=mask)
  theirs = jax.nn.dot_product_attention(q, k, v, is_causal=causal, mask=mask[:, None, None, :])
  np.testing.assert_allclose(ours, theirs, atol=1e-6)
  np.testing.assert_allclose(attn.attend(q, k, v, implementation="xla", causal=causal, mask=mask), ours, atol=1e-6)


def test_flash_gradient_memory_is_linear_in_length():
  """At T = 16k the reference's gradient needs ~3 GiB of temporaries (three T x T float32 matrices)."""
  x = jax.ShapeDtypeStruct((1, 16384, 1, 64), jnp.float32)

  def temp_bytes(fn):
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, causal=True)), argnums=(0, 1, 2)))
    return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

  reference = temp_bytes(attn.dot_product_attention)
  flash = temp_bytes(lambda *a, **kw: attn.flash_attention(*a, block_size=512, **kw))
  assert reference > 2.5 * 2 ** 30
  assert flash < 0.1 * reference


def test_rope_scores_depend_only_on_relative_position():
  q, k, _ = _qkv(1, 1, 2, 2, d=32)

  def score(m, n):
    qm = attn.apply_rope(q, jnp.array([m]))
    kn = attn.apply_rope(k, jnp.array([n]))
    return jnp.einsum("bthd,bshd->bhts", qm, kn)

  np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(score(0, 0), jnp.einsum("bthd,bshd->bhts", q, k), rtol=1e-6)  # position 0: no rotation
  assert float(jnp.max(jnp.abs(score(7, 3) - score(7, 4)))) > 1e-3
  norms = jnp.linalg.norm(attn.apply_rope(q, jnp.array([1234])), axis=-1)
  np.testing.assert_allclose(norms, jnp.linalg.norm(q, axis=-1), rtol=1e-5)  # a rotation


def test_alibi_slopes_are_the_papers():
  np.testing.assert_allclose(attn.alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)], rtol=1e-6)
  six = attn.alibi_slopes(6)  # 4 from the 4-head sequence, then 2 from the 8-head one
  np.testing.assert_allclose(six, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], rtol=1e-6)
  # The bias is -slope * distance: with zero queries and keys, attention weights fall off geometrically.
  q = jnp.zeros((1, 3, 1, 4))
  v = jnp.eye(3)[None, :, None, :].astype(jnp.float32)[..., :3]
  v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, 1)))
  out = attn.dot_product_attention(q, q, v, causal=True, alibi=jnp.array([np.log(2.0)]))
  weights = np.asarray(out[0, 2, 0, :3])
  np.testing.assert_allclose(weights, np.array([1, 2, 4]) / 7, rtol=1e-5)


@pytest.mark.parametrize("kv_heads,positions", [(4, "learned"), (2, "rope"), (1, "alibi")])
def test_multi_head_attention_implementations_agree(kv_heads, positions):
  x = jax.random.normal(jax.random.key(1), (2, 19, 32))
  outs = []
  for implementation in ("reference", "flash", "pallas"):  # pallas falls back to flash on CPU
    module = attn.MultiHeadAttention(num_heads=4, num_kv_heads=kv_heads, head_dim=8, positions=positions,
                                     implementation=implementation)
    params = module.init(jax.random.key(0), x)
    outs.append(jax.jit(functools.partial(module.apply, causal=True))(params, x))
  assert jax.tree.leaves(params)[0].shape  # boxed with logical names
  k_kernel = params["params"]["key"]["kernel"].value
  assert k_kernel.shape == (32, kv_heads, 8)
  for out in outs[1:]:
    np.testing.assert_allclose(out, outs[0], atol=2e-6)
  # Causal: the first position's output does not depend on later inputs.
  changed = jax.jit(functools.partial(module.apply, causal=True))(params, x.at[:, 5:].add(1.0))
  np.testing.assert_allclose(changed[:, :5], outs[-1][:, :5], atol=1e-6)
  assert float(jnp.max(jnp.abs(changed[:, 5:] - outs[-1][:, 5:]))) > 1e-4


def test_bad_shapes_and_names():
  q, k, v = _qkv(4, 4, 3, 2)
  with pytest.raises(ValueError, match="not a multiple"):
    attn.dot_product_attention(q, k, v)
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attn.attend(*_qkv(4, 4, 2, 2), implementation="fast")


def test_attention_dropout_at_rate_zero_changes_nothing():
  q, k, v = _qkv(7, 7, 2, 2)
  plain = attn.dot_product_attention(q, k, v, causal=True)
  key = jax.random.key(3)
  np.testing.assert_array_equal(attn.dot_product_attention(q, k, v, causal=True, dropout_rate=0.0, dropout_rng=key),
                                plain)
  traced = jax.jit(lambda r: attn.dot_product_attention(q, k, v, causal=True, dropout_rate=r, dropout_rng=key))
  np.testing.assert_allclose(traced(jnp.float32(0.0)), plain, atol=1e-6)
  # A module without an attention-dropout rate takes no 'dropout' key at all in training.
  x = jax.random.normal(jax.random.key(1), (2, 7, 16))
  module = attn.MultiHeadAttention(num_heads=2, num_kv_heads=2, head_dim=8)
  params = module.init(jax.random.key(0), x)
  np.testing.assert_array_equal(module.apply(params, x, train=True), module.apply(params, x))


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_attention_dropout_keeps_the_expected_output_and_drops_a_fraction_rate(rate):
  # Values are one-hot per key, so each output row is that query's (dropped, rescaled) probabilities.
  b, t, h = 2, 16, 2
  q, k, _ = _qkv(t, t, h, h, d=t)
  v = jnp.broadcast_to(jnp.eye(t)[None, :, None, :], (b, t, h, t))  # (B, S, H, D = S)
  plain = attn.dot_product_attention(q, k, v)  # (B, T, H, S): the probabilities themselves
  keys = jax.random.split(jax.random.key(7), 4000)
  # The traced rate, as a sweep hands it to the model.
  dropped = jax.jit(jax.vmap(lambda key, r: attn.dot_product_attention(q, k, v, dropout_rate=r, dropout_rng=key),
                             in_axes=(0, None)))(keys, jnp.float32(rate))
  zeroed = float(jnp.mean(dropped == 0))
  assert abs(zeroed - rate) < 0.01, zeroed  # 4000 x 1024 probabilities: the s.e. is below 1e-3
  kept = np.asarray(dropped)[np.asarray(dropped) != 0].reshape(-1)
  np.testing.assert_allclose(np.unique(np.round(kept / np.broadcast_to(plain, dropped.shape)[dropped != 0], 4)),
                             [round(1 / (1 - rate), 4)], rtol=1e-4)  # survivors are scaled by 1 / (1 - p)
  mean = jnp.mean(dropped, axis=0)
  se = jnp.std(dropped, axis=0) / np.sqrt(len(keys))
  assert float(jnp.max(jnp.abs(mean - plain) / (se + 1e-12))) < 5.0  # unbiased: E[output] = output


def test_attention_dropout_is_refused_by_the_other_implementations():
  q, k, v = _qkv(8, 8, 2, 2)
  key = jax.random.key(0)
  for implementation in ("flash", "xla", "pallas"):
    with pytest.raises(ValueError, match="attention dropout needs the reference attention"):
      attn.attend(q, k, v, implementation=implementation, dropout_rate=0.1, dropout_rng=key)
    # Evaluation (no key) and a rate of exactly 0 still run.
    np.testing.assert_allclose(attn.attend(q, k, v, implementation=implementation, dropout_rate=0.1),
                               attn.dot_product_attention(q, k, v), atol=2e-6)
    np.testing.assert_allclose(attn.attend(q, k, v, implementation=implementation, dropout_rate=0.0,
                                           dropout_rng=key), attn.dot_product_attention(q, k, v), atol=2e-6)
  x = jax.random.normal(jax.random.key(1), (2, 8, 16))
  module = attn.MultiHeadAttention(num_heads=2, num_kv_heads=2, head_dim=8, implementation="flash",
                                   attention_dropout=0.1)
  params = module.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="attention dropout needs the reference attention"):
    module.apply(params, x, train=True, rngs={"dropout": key})


def _projected(p, x, name):
  """x (B, T, E) through the separate layout's `name` projection: (B, T, H, D)."""
  return jnp.einsum("bte,ehd->bthd", x, p[name]["kernel"]) + p[name]["bias"]


@pytest.mark.parametrize("implementation", ["auto", "reference", "dense", "flash", "xla"])
@pytest.mark.parametrize("stack_qkv", [False, True])
def test_cross_attention_attends_to_the_context_under_its_mask(implementation, stack_qkv):
  """Queries from x (width 32), keys and values from a context of another length and width (24)."""
  x = jax.random.normal(jax.random.key(1), (2, 7, 32))
  context = jax.random.normal(jax.random.key(2), (2, 11, 24))
  mask = jnp.ones((2, 11), bool).at[1, 8:].set(False)
  init = nn.initializers.normal(0.3)
  module = attn.MultiHeadAttention(num_heads=4, num_kv_heads=2, implementation=implementation, stack_qkv=stack_qkv,
                                   kernel_init=init, out_init=init)
  variables = module.init(jax.random.key(0), x, context)
  p = nn.unbox(variables)["params"]
  assert p["query"]["kernel"].shape == (32, 4, 8) and p["key"]["kernel"].shape == (24, 2, 8)
  out = jax.jit(lambda v, x, c: module.apply(v, x, c, mask=mask))(variables, x, context)
  heads = attn.dot_product_attention(_projected(p, x, "query"), _projected(p, context, "key"),
                                     _projected(p, context, "value"), mask=mask)
  expected = jnp.einsum("bthd,hde->bte", heads, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(out, expected, atol=2e-5)
  assert float(jnp.std(out)) > 0.1
  # The masked keys of row 1 do not matter; its other keys do.
  np.testing.assert_allclose(module.apply(variables, x, context.at[1, 8:].add(5.0), mask=mask)[1], out[1], atol=2e-5)
  assert float(jnp.max(jnp.abs(module.apply(variables, x, context.at[1, :8].add(5.0), mask=mask)[1] - out[1]))) > 1e-2


def test_auto_is_the_platforms_kernel(monkeypatch):
  q = jnp.zeros((1, 4, 2, 64))
  assert attn.choose("auto", q, q) == "dense"  # this machine's CPU
  assert attn.choose("auto", q, q, dropout=True) == "reference"  # the one kernel that drops probabilities
  assert attn.choose("flash", q, q) == "flash"
  with pytest.raises(ValueError, match="unknown attention implementation 'fast'"):
    attn.choose("fast", q, q)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  half = q.astype(jnp.bfloat16)
  assert attn.choose("auto", half, half, causal=True) == "cudnn"
  assert attn.choose("auto", q, q, causal=True) == "xla"  # cuDNN's fused kernel takes 16-bit inputs
  assert attn.choose("auto", half, half, mask=jnp.ones((1, 4), bool)) == "xla"
  assert attn.choose("auto", half[:, :1], half, causal=True) == "xla"  # a query after the keys' start: a bias
  assert attn.choose("auto", jnp.zeros((1, 4, 2, 12), jnp.bfloat16), half[..., :12]) == "xla"  # head_dim 12
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert attn.choose("auto", half, half, causal=True) == "xla"


def test_auto_on_cpu_is_the_dense_kernel_and_trains_attention_dropout_on_the_reference():
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  auto = attn.MultiHeadAttention(num_heads=2, attention_dropout=0.3)
  variables = auto.init(jax.random.key(0), x)
  dense = attn.MultiHeadAttention(num_heads=2, implementation="dense")
  np.testing.assert_array_equal(auto.apply(variables, x, causal=True), dense.apply(variables, x, causal=True))
  reference = attn.MultiHeadAttention(num_heads=2, implementation="reference", attention_dropout=0.3)
  rngs = {"dropout": jax.random.key(4)}
  dropped = auto.apply(variables, x, causal=True, train=True, rngs=rngs)
  np.testing.assert_array_equal(dropped, reference.apply(variables, x, causal=True, train=True, rngs=rngs))
  assert float(jnp.max(jnp.abs(dropped - auto.apply(variables, x, causal=True)))) > 1e-4


def test_fused_layout_is_the_separate_one_with_one_kernel():
  """The U-Net's (E, 3, H, D) kernel under flax's names, against the separate layout's three kernels."""
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  init = nn.initializers.normal(0.5)
  fused = attn.MultiHeadAttention(num_heads=2, layout="fused", kernel_init=init, out_init=init)
  p = nn.unbox(fused.init(jax.random.key(0), x))["params"]
  assert set(p) == {"DenseGeneral_0", "DenseGeneral_1"}
  assert p["DenseGeneral_0"]["kernel"].shape == (16, 3, 2, 8) and p["DenseGeneral_1"]["kernel"].shape == (2, 8, 16)
  qkv = p["DenseGeneral_0"]
  separate = {name: {"kernel": qkv["kernel"][:, i], "bias": qkv["bias"][i]}
              for i, name in enumerate(("query", "key", "value"))}
  separate["out"] = p["DenseGeneral_1"]
  out = fused.apply({"params": p}, x, causal=True)
  np.testing.assert_allclose(out, attn.MultiHeadAttention(num_heads=2).apply({"params": separate}, x, causal=True),
                             atol=1e-5)
  assert float(jnp.std(out)) > 0.1
  with pytest.raises(ValueError, match="fused layout"):
    fused.init(jax.random.key(0), x, x[:, :3])
  with pytest.raises(ValueError, match="fused layout"):
    attn.MultiHeadAttention(num_heads=2, num_kv_heads=1, layout="fused").init(jax.random.key(0), x)


def test_stacked_and_separate_projections_share_parameters_and_values(monkeypatch):
  """Off CPUs the projections of one input are one product by default; on CPUs three."""
  x = jax.random.normal(jax.random.key(1), (2, 9, 16))
  module = attn.MultiHeadAttention(num_heads=2, implementation="reference")
  products = lambda: str(jax.make_jaxpr(module.apply)(variables, x)).count("dot_general")
  variables = module.init(jax.random.key(0), x)
  cpu = module.apply(variables, x)
  assert products() == 3 + 2 + 1  # q, k, v; scores and weighted sum; out
  monkeypatch.setattr(attn.layers, "on_cpu", lambda: False)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the kernel stays the reference
  again = module.init(jax.random.key(0), x)
  for a, b in zip(jax.tree.leaves(nn.unbox(again)), jax.tree.leaves(nn.unbox(variables))):
    np.testing.assert_array_equal(a, b)
  assert products() == 1 + 2 + 1
  np.testing.assert_allclose(module.apply(variables, x), cpu, atol=1e-6)


@pytest.mark.parametrize("layout, stack_qkv, context", [("separate", False, True), ("separate", True, True),
                                                        ("separate", True, False), ("fused", None, False)])
def test_projections_without_biases(layout, stack_qkv, context):
  """qkv_bias=False (diffusers' to_q/to_k/to_v): no query, key or value biases in any layout, the output keeps its
  own; the values are those of the biased module with zero biases."""
  x, ctx = jax.random.normal(jax.random.key(1), (2, 9, 16)), jax.random.normal(jax.random.key(2), (2, 5, 6))
  args = (x, ctx) if context else (x,)
  make = lambda bias: attn.MultiHeadAttention(num_heads=2, layout=layout, stack_qkv=stack_qkv, qkv_bias=bias,
                                              out_init=nn.initializers.normal(0.5))
  p = nn.unbox(make(False).init(jax.random.key(0), *args))["params"]
  biased = nn.unbox(make(True).init(jax.random.key(0), *args))["params"]
  fused = layout == "fused"
  out_name, qkv_names = ("DenseGeneral_1", ["DenseGeneral_0"]) if fused else ("out", ["query", "key", "value"])
  assert all(set(p[name]) == {"kernel"} for name in qkv_names) and set(p[out_name]) == {"kernel", "bias"}
  zero_biases = {name: {"kernel": p[name]["kernel"], "bias": jnp.zeros_like(biased[name]["bias"])}
                 for name in qkv_names}
  np.testing.assert_allclose(make(False).apply({"params": p}, *args),
                             make(True).apply({"params": {**p, **zero_biases}}, *args), atol=1e-6)


def test_options_that_do_not_apply_are_refused_in_one_line():
  x = jnp.zeros((1, 4, 16))
  bad = [(dict(positions="rope"), dict(context=x), "rope positions are for self-attention"),
         (dict(positions="alibi"), dict(context=x), "alibi positions are for self-attention"),
         (dict(), dict(context=x, cache=attn.KVCache.zeros(1, 4, 2, 8), cache_index=0), "the KV cache is for self"),
         (dict(layout="stacked"), dict(), "unknown attention layout 'stacked'"),
         (dict(implementation="fast"), dict(), "unknown attention implementation 'fast'"),
         (dict(positions="sinusoidal"), dict(), "unknown positions 'sinusoidal'"),
         (dict(num_heads=3), dict(), "the width 16 is not divisible by 3 heads")]
  for attributes, call, message in bad:
    module = attn.MultiHeadAttention(**{"num_heads": 2, **attributes})
    with pytest.raises(ValueError, match=message):
      module.init(jax.random.key(0), x, **call)


def test_a_score_bias_is_added_before_the_softmax_by_every_kernel_that_takes_one():
  q, k, v = _qkv(6, 9, 4, 2)
  bias = jax.random.normal(jax.random.key(3), (1, 4, 6, 9))  # (1, H, T, S), e.g. T5's relative positions
  mask = jnp.arange(9)[None, :] < jnp.array([[9], [5]])  # (B, S)
  kr, vr = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
  scores = jnp.einsum("bthd,bshd->bhts", q, kr) / 4.0 + bias
  probs = jax.nn.softmax(jnp.where(mask[:, None, None], scores, -jnp.inf), axis=-1)
  expected = jnp.einsum("bhts,bshd->bthd", probs, vr)
  np.testing.assert_allclose(attn.dot_product_attention(q, k, v, mask=mask, bias=bias), expected, atol=1e-5)
  np.testing.assert_allclose(attn.attend(q, k, v, implementation="xla", mask=mask, bias=bias), expected, atol=1e-5)
  swap = lambda x: jnp.swapaxes(x, 1, 2)  # the cache's (B, Hkv, S, D)
  np.testing.assert_allclose(attn.cached_attention(q, swap(k), swap(v), mask=mask, bias=bias), expected, atol=1e-5)
  assert attn.choose("auto", q, k, bias=bias) in ("reference", "xla")  # never a blockwise kernel
  with pytest.raises(ValueError, match="a score bias needs the reference"):
    attn.attend(q, k, v, implementation="flash", bias=bias)


def test_cross_attention_keys_and_values_projected_once_equal_the_context_call():
  layer = attn.MultiHeadAttention(num_heads=3, head_dim=4, qkv_bias=False, out_bias=False, scale=1.0)
  x, context = jax.random.normal(jax.random.key(0), (2, 5, 12)), jax.random.normal(jax.random.key(1), (2, 7, 10))
  mask = jnp.arange(7)[None, :] < jnp.array([[7], [3]])
  params = layer.init(jax.random.key(2), x, context)
  assert "bias" not in params["params"]["query"] and "bias" not in params["params"]["out"]
  kv = layer.apply(params, None, context)  # (B, H, S, D) each
  assert kv.k.shape == (2, 3, 7, 4)
  np.testing.assert_allclose(layer.apply(params, x, kv=kv, mask=mask), layer.apply(params, x, context, mask=mask),
                             atol=1e-5)
