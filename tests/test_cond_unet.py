"""The text-conditioned U-Net against diffusers' UNet2DConditionModel: outputs, weights both ways, Stable
Diffusion's options and size; a fresh model's zero output and use of the context; sampling with
classifier-free guidance; bad input."""

import functools
import inspect
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trees import assert_trees_equal
from research.models import cond_unet
from research.models import diffusion

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Odd sizes: heads of 8 and 9 channels (5 heads do not divide 48: diffusers keeps 5 x 9 = 45 wide
# attention between the 1x1 projections), a 20-wide context, 3 input and 5 output channels.
SMALL = dict(sample_size=8, in_channels=3, out_channels=5, block_out_channels=(24, 48), layers_per_block=2,
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, cross_attention_dim=20, attention_head_dim=(3, 5))
# Stable Diffusion 2's linear projections and the other supported options away from their defaults.
OPTIONS = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, norm_eps=1e-6,
               cross_attention_dim=12, attention_head_dim=4, use_linear_projection=True,
               transformer_layers_per_block=2, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
               center_input_sample=True, mid_block_scale_factor=1.5, time_embedding_dim=36, upcast_attention=True)


def _reference(tmp_path_factory, name, options):
  """A random diffusers UNet2DConditionModel, every weight (GroupNorm and LayerNorm too) moved off its init, saved."""
  torch.manual_seed(0)
  model = diffusers.UNet2DConditionModel(**options).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  path = tmp_path_factory.mktemp(name)
  model.save_pretrained(path)
  return model, str(path)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  return _reference(tmp_path_factory, "small", SMALL)


def _inputs(options, batch=2, length=7, seed=0):
  rng = np.random.default_rng(seed)
  side = options["sample_size"]
  x = rng.standard_normal((batch, side, side, options["in_channels"])).astype(np.float32)  # NHWC
  return x, np.array([3, 999][:batch]), rng.standard_normal((batch, length, options["cross_attention_dim"])).astype(
      np.float32)


def _theirs(model, x, t, context):
  with torch.no_grad():
    out = model(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(t), torch.tensor(context)).sample
  return out.numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC


@functools.lru_cache
def _jitted_apply(model):
  return jax.jit(model.apply, static_argnames="train")


def test_output_equals_diffusers_and_weights_go_both_ways(reference, tmp_path):
  hf_model, path = reference
  model, params = cond_unet.load_hf(path)
  assert model.cfg.num_attention_heads == (3, 5) and model.cfg.cross_attention_dim == 20
  x, t, context = _inputs(SMALL)
  ours = _jitted_apply(model)({"params": params}, x, t, context)
  theirs = _theirs(hf_model, x, t, context)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  assert ours.shape == (2, 8, 8, 5) and float(np.std(theirs)) > 0.5  # not a near-constant output
  # Ours saved: diffusers loads the same model, and reading it back gives the same bits.
  cond_unet.save_hf(model, params, str(tmp_path))
  again_model, again = cond_unet.load_hf(str(tmp_path))
  assert again_model.cfg == model.cfg
  assert_trees_equal(params, again)
  loaded = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path)).eval()
  np.testing.assert_array_equal(_theirs(loaded, x, t, context), theirs)


def test_stable_diffusion_2_options_equal_diffusers_and_ddim_samples_with_guidance(tmp_path_factory):
  """The samplers take the U-Net through a closure over its parameters; classifier-free guidance concatenates
  the captions' contexts with the empty caption's, as it does class labels with the null label."""
  hf_model, path = _reference(tmp_path_factory, "options", OPTIONS)
  model, params = cond_unet.load_hf(path)
  assert model.cfg.use_linear_projection and model.cfg.downsample_padding == 0
  x, t, context = _inputs(OPTIONS, length=3)
  ours = jax.jit(model.apply)({"params": params}, x, t, context)
  theirs = _theirs(hf_model, x, t, context)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
  assert float(np.std(theirs)) > 0.5

  empty = np.random.default_rng(2).standard_normal((1, 3, 12)).astype(np.float32)  # a text encoder's ""
  schedule = diffusion.make_schedule("linear", 1000)
  taus = diffusion.ddim_timesteps(1000, 2)

  @jax.jit
  def sample(params, context, w):
    cond_fn = lambda x_t, t, c: model.apply({"params": params}, x_t, t, c)
    denoise = diffusion.classifier_free_guidance(cond_fn, context, empty, w)  # (2B, ...) per call
    return diffusion.sample_ddim(schedule, denoise, jax.random.key(3), x.shape, taus)

  guided, swapped = sample(params, context, 3.0), sample(params, context[::-1], 3.0)
  assert guided.shape == x.shape and bool(jnp.all(jnp.isfinite(guided)))
  assert float(jnp.max(jnp.abs(guided - swapped))) > 1e-3  # each sample follows its own caption
  # w = 0 is the unconditional model alone: the captions no longer matter.
  np.testing.assert_allclose(sample(params, context, 0.0), sample(params, context[::-1], 0.0), atol=1e-5)


@pytest.mark.parametrize("dim, flip, shift", [(24, True, 0), (21, False, 1), (7, True, 1)])
def test_timestep_features_equal_diffusers(dim, flip, shift):
  from diffusers.models.embeddings import get_timestep_embedding  # pylint: disable=import-outside-toplevel
  t = np.array([0, 1, 17, 500, 999])
  theirs = get_timestep_embedding(torch.tensor(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
  ours = cond_unet.embeddings.timestep_frequencies(t, dim, freq_shift=shift, flip_sin_to_cos=flip)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)  # float32 rounding of t * frequency


def test_stable_diffusion_1_has_its_860m_parameters_and_every_config_field_is_placed():
  # Stable Diffusion 1.x's U-Net: 859,520,964 parameters, counted from shapes alone.
  assert cond_unet.count_params(cond_unet.CONFIGS["sd1"]) == 859_520_964
  # Each of diffusers' options is either one we have or one we refuse away from its default.
  known = set(cond_unet._FIELDS) | set(cond_unet._FIXED)  # pylint: disable=protected-access
  options = set(inspect.signature(diffusers.UNet2DConditionModel.__init__).parameters) - {"self"}
  assert options <= known, options - known
  # Every parameter of a fresh model has a row of the weight table, and nothing else does.
  cfg = cond_unet.config_from_diffusers(dict(OPTIONS, mid_block_type=None, layers_per_block=(1, 2)))
  paths = {tuple(k.key for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(cond_unet.init_shapes(cfg)["params"])[0]}
  assert paths == {row.ours for row in cond_unet._hf_table(cfg)}  # pylint: disable=protected-access


def test_fresh_model_zero_initialises_what_latent_diffusion_does():
  """Each ResNet block's conv2, each transformer's proj_out and conv_out start at zero, as in the latent-diffusion
  code: a fresh U-Net outputs 0 and each block starts as the identity."""
  cfg = cond_unet.config_from_diffusers(SMALL)
  x, t, context = _inputs(SMALL)
  zero_init = lambda path: path[-2] in ("conv2", "proj_out", "conv_out")

  def pick(params):  # only these leaves are returned, so XLA drops every other initializer and the forward pass
    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(params))[0]
    return {tuple(k.key for k in path): leaf for path, leaf in flat if zero_init(tuple(k.key for k in path))}

  picked = jax.jit(lambda key: pick(cond_unet.CondUNet(cfg).init(key, x, t, context)["params"]))(jax.random.key(0))
  # 4 + 2 + 6 ResNet blocks (down, mid, up), 2 + 1 + 3 transformers and conv_out; a kernel and a bias each.
  assert len(picked) == 2 * (12 + 6 + 1)
  for path, leaf in picked.items():
    np.testing.assert_array_equal(leaf, 0.0, err_msg="/".join(path))


def test_bad_input(reference, tmp_path):
  _, path = reference
  model, params = cond_unet.load_hf(path)
  x, t, context = _inputs(SMALL)
  apply = lambda *a: model.apply({"params": params}, *a)
  for args, message in [((x[..., :2], t, context), r"expected x of shape \(B, H, W, 3\) \(NHWC\)"),
                        ((x[:, :7, :7], t, context), r"must be divisible by 2"),
                        ((x, t[:1], context), r"expected t of shape \(2,\)"),
                        ((x, t, context[..., :4]), r"expected context of shape \(2, L, 20\)")]:
    with pytest.raises(ValueError, match=message):
      apply(*args)
  saved = json.loads(open(os.path.join(path, "config.json")).read())
  for change, message in [(dict(class_embed_type="timestep"), "unsupported UNet2DConditionModel option "
                                                              "class_embed_type='timestep'"),
                          (dict(act_fn="gelu"), "option act_fn='gelu'"),
                          (dict(resnet_time_scale_shift="scale_shift"), "option resnet_time_scale_shift"),
                          (dict(colour="red"), "unknown UNet2DConditionModel config field 'colour'"),
                          (dict(_class_name="UNet2DModel"), "describes a UNet2DModel, not a UNet2DConditionModel"),
                          (dict(norm_num_groups=5), "norm_num_groups 5 does not divide block_out_channels 24"),
                          (dict(cross_attention_dim=[20, 20]), "cross_attention_dim must be one positive integer"),
                          (dict(down_block_types=["AttnDownBlock2D", "DownBlock2D"]),
                           "unsupported down_block_types entry 'AttnDownBlock2D'"),
                          (dict(attention_head_dim=[3, 5, 5]), "num_attention_heads has 3 entries for 2 levels")]:
    with pytest.raises(ValueError, match=message):
      cond_unet.config_from_diffusers({**saved, **change})
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(saved))
  weights = str(tmp_path / "diffusion_pytorch_model.safetensors")
  name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
  for changed, message in [({k: v for k, v in tensors.items() if k != name}, f"tensor {name} is missing"),
                           ({**tensors, name: tensors[name][:, :19]}, f"tensor {name} has shape \\(24, 19\\)"),
                           ({**tensors, name: tensors[name][:23]}, f"tensor {name} has shape \\(23, 20\\)"),
                           ({**tensors, "extra.weight": tensors[name]}, "tensor extra.weight of .* has no place")]:
    save_file(changed, weights)
    with pytest.raises(ValueError, match=message):
      cond_unet.load_hf(str(tmp_path))
  with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors is missing"):
    os.remove(weights)
    cond_unet.load_hf(str(tmp_path))
