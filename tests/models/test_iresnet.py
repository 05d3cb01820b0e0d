"""IResNet: AdaFace layout and parameter counts, shapes, occlusion branch, gradient isolation, CPU precision."""

from __future__ import annotations

import pytest
import torch

from oaml.models import BACKBONE_NAMES, IResNet, build_backbone

# Parameter counts of AdaFace's backbones at 112x112 (without OAML's occlusion head).
EXPECTED_PARAMS_M = {"ir18": 24.02, "ir34": 34.13, "ir50": 43.59, "ir100": 65.15, "ir_se50": 43.81}


def tiny(**kwargs) -> IResNet:
    """A small 4-stage IResNet with AdaFace's unit/stride layout, fast enough for CPU tests."""
    defaults = dict(units=(1, 1, 1, 1), channels=(16, 16, 32, 32), stem_channels=8, embedding_size=16)
    defaults.update(kwargs)
    return IResNet(**defaults)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_M))
def test_parameter_counts_match_adaface(name: str) -> None:
    model = build_backbone(name)
    assert round(model.num_backbone_parameters() / 1e6, 2) == EXPECTED_PARAMS_M[name]
    head = sum(p.numel() for p in model.occlusion_head.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert total - head == model.num_backbone_parameters()
    assert head == 590_209


def test_aliases_build_the_same_architecture() -> None:
    expected = {
        "ir_18": (2, 2, 2, 2),
        "ir_34": (3, 4, 6, 3),
        "ir_50": (3, 4, 14, 3),
        "ir_101": (3, 13, 30, 3),
    }
    for alias, units in expected.items():
        model = build_backbone(alias)
        assert model.units == units and not model.se and model.channels == (64, 128, 256, 512)
    se50 = build_backbone("ir_se_50")
    assert se50.se and se50.units == (3, 4, 14, 3)


def test_unknown_name_and_fixed_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="ir_nano"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="units"):
        build_backbone("ir18", units=(1, 1, 1, 1))
    assert "ir_101" in BACKBONE_NAMES


def test_adaface_module_names() -> None:
    keys = set(build_backbone("ir_se50").state_dict())
    # stem, first unit (64 -> 64: parameter-free max-pool shortcut), first unit of stage 2 (conv shortcut)
    for key in [
        "input_layer.0.weight",
        "input_layer.1.running_var",
        "input_layer.2.weight",
        "body.0.res_layer.0.weight",
        "body.0.res_layer.1.weight",
        "body.0.res_layer.3.weight",
        "body.0.res_layer.4.weight",
        "body.0.res_layer.5.bias",
        "body.0.res_layer.se_block.fc1.weight",
        "body.0.res_layer.se_block.fc2.weight",
        "body.3.shortcut_layer.0.weight",
        "body.3.shortcut_layer.1.running_mean",
        "output_layer.0.weight",
        "output_layer.3.weight",
        "output_layer.3.bias",
        "output_layer.4.running_mean",
    ]:
        assert key in keys, key
    assert not any(k.startswith("body.0.shortcut_layer") for k in keys)
    assert "output_layer.4.weight" not in keys  # BatchNorm1d(affine=False)
    assert len([k for k in keys if k.startswith("body.") and k.endswith("res_layer.0.weight")]) == 24
    model = build_backbone("ir50")
    assert model.output_layer[3].in_features == 512 * 7 * 7
    # first unit of every stage (stage 1 included) halves the map on its second conv
    strides = [unit.res_layer[4].stride[0] for unit in model.body]
    assert strides == [2, 1, 1, 2, 1, 1, 1, 2] + [1] * 13 + [2, 1, 1]


@pytest.mark.parametrize(("input_size", "side"), [(112, 7), (224, 14)])
def test_shapes_and_outputs(input_size: int, side: int) -> None:
    torch.manual_seed(0)
    model = tiny(input_size=input_size).eval()
    assert model.feature_size == (side, side) and model.feature_channels == 32 and model.embedding_size == 16
    x = torch.randn(2, 3, input_size, input_size)
    embedding, norm = model(x)
    assert embedding.shape == (2, 16) and norm.shape == (2, 1)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    out = model(x, return_occlusion=True)
    assert len(out) == 4
    emb2, norm2, occlusion, features = out
    assert features.shape == (2, 32, side, side)
    assert occlusion.shape == (2, 1, side, side)
    assert ((occlusion >= 0) & (occlusion <= 1)).all()
    torch.testing.assert_close(emb2, embedding)
    torch.testing.assert_close(norm2, norm)
    # one body pass reused: forward_features + embed gives the same result as forward
    e3, n3 = model.embed(model.forward_features(x))
    torch.testing.assert_close(e3, embedding)
    torch.testing.assert_close(n3, norm)
    # the embedding is the normalised output_layer and norm its length
    raw = model.output_layer(features)
    torch.testing.assert_close(embedding * norm, raw)


@pytest.mark.parametrize(("input_size", "side"), [(112, 7), (224, 14)])
def test_ir_nano_feature_map_size(input_size: int, side: int) -> None:
    model = build_backbone("ir_nano", input_size=input_size, embedding_size=64).eval()
    assert model.feature_size == (side, side)
    assert model.output_layer[3].in_features == 128 * side * side
    emb, norm, occ, feats = model(torch.randn(2, 3, input_size, input_size), return_occlusion=True)
    assert feats.shape == (2, 128, side, side) and occ.shape == (2, 1, side, side) and emb.shape == (2, 64)
    assert norm.shape == (2, 1)
    assert len(model.body) >= 4


def test_fresh_occlusion_head_is_not_saturated() -> None:
    """AdaFace's fan_out init must not reach the occlusion head: its 1-channel conv would get std ~1.4 and
    saturate the sigmoid, where the occlusion MSE has almost no gradient."""
    torch.manual_seed(0)
    model = build_backbone("ir_nano", embedding_size=64).train()
    _, _, visibility, _ = model(torch.randn(8, 3, 112, 112), return_occlusion=True)
    inside = ((visibility > 0.05) & (visibility < 0.99)).float().mean().item()
    assert inside > 0.95, inside
    head = model.occlusion_head
    assert torch.all(head.conv2.bias == 0.0)
    assert float(head.conv2.weight.detach().std()) < 0.2  # fan_in (0.125), not AdaFace's fan_out (1.4)
    # the backbone keeps AdaFace's init: the embedding Linear has the fan_out std sqrt(2 / out_features)
    linear = model.output_layer[3].weight
    assert abs(float(linear.detach().std()) - (2.0 / 64) ** 0.5) < 0.01


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="input_size"):
        tiny(input_size=128)
    with pytest.raises(ValueError, match="equal length"):
        IResNet(units=(1, 1), channels=(8, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 3, 112, 112\]"):
        tiny()(torch.randn(2, 3, 96, 96))


@pytest.mark.parametrize("detach", [True, False])
def test_occlusion_loss_gradient_isolation(detach: bool) -> None:
    torch.manual_seed(0)
    model = tiny(occlusion_detach_features=detach)
    _, _, occlusion, _ = model(torch.randn(4, 3, 112, 112), return_occlusion=True)
    target = torch.zeros_like(occlusion)
    torch.nn.functional.mse_loss(occlusion, target).backward()
    body_grads = [p.grad for n, p in model.named_parameters() if n.startswith(("body.", "input_layer."))]
    head_grads = [p.grad for p in model.occlusion_head.parameters()]
    assert len(head_grads) == 5  # conv1 weight, BN weight and bias, conv2 weight and bias
    assert all(g is not None and g.abs().sum() > 0 for g in head_grads)
    body_signal = sum(float(g.abs().sum()) for g in body_grads if g is not None)
    if detach:
        assert body_signal == 0.0
    else:
        assert body_signal > 0.0


def test_channels_last_and_bf16_autocast_on_cpu() -> None:
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 112, 112)
    ref_emb, ref_norm, ref_occ, _ = model(x, return_occlusion=True)

    model_cl = model.to(memory_format=torch.channels_last)
    emb, norm, occ, _ = model_cl(x.contiguous(memory_format=torch.channels_last), return_occlusion=True)
    torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(occ, ref_occ, atol=1e-4, rtol=1e-4)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, norm, occ, _ = model_cl(x.contiguous(memory_format=torch.channels_last), return_occlusion=True)
    for t in (emb, norm, occ):
        assert torch.isfinite(t.float()).all()
    # bf16 has ~3 significant digits: cosine to the fp32 embedding stays near 1
    cosine = torch.nn.functional.cosine_similarity(emb.float(), ref_emb, dim=1)
    assert (cosine > 0.98).all(), cosine
    torch.testing.assert_close(norm.float(), ref_norm, rtol=0.05, atol=0.05)
    torch.testing.assert_close(occ.float(), ref_occ, atol=0.1, rtol=0)


def test_kaiming_fan_out_init() -> None:
    torch.manual_seed(0)
    conv = build_backbone("ir18").body[7].res_layer[1]  # 3x3 conv 512 -> 512
    expected_std = (2.0 / (512 * 9)) ** 0.5
    assert abs(float(conv.weight.detach().std()) - expected_std) / expected_std < 0.02


@pytest.mark.parametrize("stage", [0, 1, 2, -2])
def test_occlusion_head_reads_the_configured_stage(stage: int) -> None:
    """The head's input is the output of the stem (0) or of stage k, taken in the same pass as the final map."""
    torch.manual_seed(0)
    model = tiny(occlusion_input_stage=stage, occlusion_layers=1).eval()
    x = torch.randn(2, 3, 112, 112)
    _, _, visibility, feature_maps = model(x, return_occlusion=True)
    stage_index = stage % (len(model.units) + 1)
    expected_input = model.input_layer(x)
    for unit in model.body[: sum(model.units[:stage_index])]:
        expected_input = unit(expected_input)
    assert model.occlusion_head.in_channels == expected_input.shape[1]
    torch.testing.assert_close(visibility, model.occlusion_head(expected_input))
    assert visibility.shape[-2:] == feature_maps.shape[-2:] == model.feature_size
    torch.testing.assert_close(feature_maps, model.forward_features(x))


def test_occlusion_loss_through_an_early_stage_reaches_only_the_units_before_it() -> None:
    torch.manual_seed(0)
    model = tiny(occlusion_input_stage=1, occlusion_detach_features=False)
    _, _, occlusion, _ = model(torch.randn(4, 3, 112, 112), return_occlusion=True)
    occlusion.mean().backward()
    first_stage = sum(model.units[:1])
    for name, param in model.named_parameters():
        if name.startswith("input_layer.") or (
            name.startswith("body.") and int(name.split(".")[1]) < first_stage
        ):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        elif name.startswith(("body.", "output_layer.")):
            assert param.grad is None or param.grad.abs().sum() == 0, name


def test_occlusion_input_stage_out_of_range_names_the_key() -> None:
    with pytest.raises(ValueError, match="occlusion.input_stage"):
        tiny(occlusion_input_stage=9)


def test_occlusion_head_on_the_image_has_its_own_stem() -> None:
    """input_stage='image': the head reads the normalised image through its own stride-2 stem down to the
    feature grid, and its loss reaches none of the backbone's weights (detached or not)."""
    torch.manual_seed(0)
    model = tiny(occlusion_input_stage="image", occlusion_detach_features=False, occlusion_hidden_channels=8)
    assert model.occlusion_head.in_channels == 3 and model.occlusion_head.downsample_steps == 4
    x = torch.randn(2, 3, 112, 112)
    _, _, visibility, feature_maps = model(x, return_occlusion=True)
    assert visibility.shape[-2:] == feature_maps.shape[-2:] == (7, 7)
    model.eval()
    torch.testing.assert_close(model(x, return_occlusion=True)[2], model.occlusion_head(x))
    model.train()
    model(x, return_occlusion=True)[2].mean().backward()
    for name, param in model.named_parameters():
        if name.startswith("occlusion_head."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_erase_hidden_blanks_whole_cells_below_one_half() -> None:
    images = torch.randn(1, 3, 112, 112)
    visibility = torch.ones(1, 1, 7, 7)
    visibility[0, 0, 2, 5] = 0.49  # hidden: rows 32..47, columns 80..95
    visibility[0, 0, 4, 1] = 0.5  # visible (the threshold is inclusive)
    erased = IResNet.erase_hidden(images, visibility)
    assert erased[..., 32:48, 80:96].abs().sum() == 0
    outside = torch.ones(112, 112, dtype=torch.bool)
    outside[32:48, 80:96] = False
    torch.testing.assert_close(erased[..., outside], images[..., outside])


def test_erasing_body_never_sees_pixels_of_hidden_cells() -> None:
    """occlusion_erase: whatever lies in a cell the map calls hidden cannot change the identity features,
    and the body reads exactly ``erase_hidden`` of the image (by the head's map, or by the one given)."""
    torch.manual_seed(0)
    model = tiny(occlusion_input_stage="image", occlusion_erase=True, occlusion_hidden_channels=8).eval()
    x = torch.randn(2, 3, 112, 112)
    given = torch.ones(2, 1, 7, 7)
    given[:, :, 3:, :] = 0.0  # the lower half of the face hidden
    occluder = x.clone()
    occluder[..., 48:, :] = torch.rand(2, 3, 64, 112) * 5
    for images in (x, occluder):
        _, _, visibility, maps = model(images, return_occlusion=True, erase_visibility=given)
        torch.testing.assert_close(visibility, model.occlusion_head(images))  # the unerased image's map
    torch.testing.assert_close(
        model(x, erase_visibility=given)[0], model(occluder, erase_visibility=given)[0]
    )
    assert not torch.allclose(model(x)[0], model(occluder)[0])  # the head's own map differs from `given`
    plain = tiny(occlusion_input_stage="image", occlusion_hidden_channels=8).eval()
    plain.load_state_dict(model.state_dict())
    own = IResNet.erase_hidden(x, model.occlusion_head(x))
    torch.testing.assert_close(model(x, return_occlusion=True)[3], plain(own, return_occlusion=True)[3])


def test_erasure_needs_the_image_head_and_an_erasing_model() -> None:
    with pytest.raises(ValueError, match="occlusion.input_stage=image"):
        tiny(occlusion_erase=True, occlusion_input_stage=-1)
    with pytest.raises(ValueError, match="occlusion_erase=False"):
        tiny(occlusion_input_stage="image")(
            torch.randn(1, 3, 112, 112), erase_visibility=torch.ones(1, 1, 7, 7)
        )
