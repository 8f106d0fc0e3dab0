"""Backbones: registry, shapes, stage maps, parameter counts and insightface state_dict layout.

The expected parameter counts and state_dict keys are derived here from the arcface_torch layer
layout, independently of the modules under test.
"""

from __future__ import annotations

import pytest
import torch

from otface.models import BACKBONES, Backbone, build_backbone

# blocks per stage, as published (arcface_torch's get_model); independent of this table, the name
# says the depth: 2 weighted layers per block, the stem conv and the fc (test_depth_is_the_name)
IRESNET_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
MBF_CONFIGS = {"mbf": ((1, 4, 6, 2), 2), "mbf_large": ((2, 8, 12, 4), 4)}
DEEP = {"iresnet100", "iresnet200"}

IRESNET_SHAPES_112 = {
    "layer1": (64, 56, 56),
    "layer2": (128, 28, 28),
    "layer3": (256, 14, 14),
    "layer4": (512, 7, 7),
}
IRESNET_SHAPES_56 = {
    "layer1": (64, 28, 28),
    "layer2": (128, 14, 14),
    "layer3": (256, 7, 7),
    "layer4": (512, 4, 4),
}
MBF_SHAPES_112 = {
    "stage1": (128, 56, 56),
    "stage2": (128, 28, 28),
    "stage3": (256, 14, 14),
    "stage4": (256, 7, 7),
    "conv_sep": (512, 7, 7),
}
MBF_SHAPES_56 = {
    "stage1": (128, 28, 28),
    "stage2": (128, 14, 14),
    "stage3": (256, 7, 7),
    "stage4": (256, 4, 4),
    "conv_sep": (512, 4, 4),
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(maps: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape[1:]) for name, t in maps.items()}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- independent descriptions of arcface_torch's layouts -------------------------------------


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def iresnet_layout(depths, embedding=512, side=7) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of arcface_torch's IResNet."""
    sd = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "prelu.weight": (64,)}
    cin = 64
    for index, (depth, c) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
        for j in range(depth):
            p, i = f"layer{index}.{j}", (cin if j == 0 else c)
            sd.update(_bn(f"{p}.bn1", i))
            sd[f"{p}.conv1.weight"] = (c, i, 3, 3)
            sd.update(_bn(f"{p}.bn2", c))
            sd[f"{p}.prelu.weight"] = (c,)
            sd[f"{p}.conv2.weight"] = (c, c, 3, 3)
            sd.update(_bn(f"{p}.bn3", c))
            if j == 0:  # every stage starts with a stride-2 block
                sd[f"{p}.downsample.0.weight"] = (c, i, 1, 1)
                sd.update(_bn(f"{p}.downsample.1", c))
        cin = c
    sd.update(_bn("bn2", 512))
    sd["fc.weight"] = (embedding, 512 * side * side)
    sd["fc.bias"] = (embedding,)
    sd.update(_bn("features", embedding))
    return sd


def mbf_layout(blocks, scale, embedding=512, side=7) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of arcface_torch's MobileFaceNet."""
    sd: dict[str, tuple[int, ...]] = {}

    def conv_block(p, cin, cout, k=1, groups=1, act=True):
        sd[f"{p}.layers.0.weight"] = (cout, cin // groups, k, k)
        sd.update(_bn(f"{p}.layers.1", cout))
        if act:
            sd[f"{p}.layers.2.weight"] = (cout,)

    def depthwise(p, cin, cout, hidden):
        conv_block(f"{p}.layers.0", cin, hidden)
        conv_block(f"{p}.layers.1", hidden, hidden, 3, groups=hidden)
        conv_block(f"{p}.layers.2", hidden, cout, act=False)

    def residual(p, c, n, hidden):
        for j in range(n):
            depthwise(f"{p}.layers.{j}", c, c, hidden)

    n, w = 64 * scale, 128 * scale
    conv_block("layers.0", 3, n, 3)
    if blocks[0] == 1:
        conv_block("layers.1", n, n, 3, groups=64)
    else:
        residual("layers.1", n, blocks[0], 128)
    depthwise("layers.2", n, n, 128)
    residual("layers.3", n, blocks[1], 128)
    depthwise("layers.4", n, w, 256)
    residual("layers.5", w, blocks[2], 256)
    depthwise("layers.6", w, w, 512)
    residual("layers.7", w, blocks[3], 256)
    conv_block("conv_sep", w, 512)
    conv_block("features.layers.0", 512, 512, side, groups=512, act=False)
    sd["features.layers.2.weight"] = (embedding, 512)
    sd.update(_bn("features.layers.3", embedding))
    return sd


def _layout_params(layout: dict[str, tuple[int, ...]]) -> int:
    """Parameter count of a layout: everything but the BN buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(
        int(torch.Size(shape).numel()) for key, shape in layout.items() if not key.endswith(buffers)
    )


def _state_shapes(model: Backbone) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- registry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50", "iresnet100"])
def test_depth_is_the_name(name: str) -> None:
    """The 3x3 convs and the fc counted in the built model give the depth its name states (the
    strided 1x1 shortcut convs are not counted, as in ResNet); insightface's iresnet200 has 198."""
    with torch.device("meta"):
        model = build_backbone(name)
    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    linears = sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert convs + linears == int(name.removeprefix("iresnet"))


def test_registry_names_and_aliases() -> None:
    names = set(BACKBONES.names())
    assert set(IRESNET_DEPTHS) | {"mbf", "mobilefacenet", "mbf_large"} <= names
    assert {"r18", "r34", "r50", "r100", "r200"} <= names
    assert BACKBONES.get("r50") is BACKBONES.get("iresnet50")
    assert BACKBONES.get("mobilefacenet") is BACKBONES.get("mbf")
    with pytest.raises(KeyError, match="iresnet50"):
        build_backbone("resnet50")


# --- shapes ------------------------------------------------------------------------------------


def _name_params():
    """Each registered backbone once (aliases skipped); the 100/200-layer ones marked slow."""
    seen = set()
    for name in BACKBONES.names():
        factory = BACKBONES.get(name)
        if factory in seen:
            continue
        seen.add(factory)
        marks = [pytest.mark.slow] if name in DEEP else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("input_size", [112, 56])
@pytest.mark.parametrize("name", list(_name_params()))
def test_forward_and_stage_shapes(name: str, input_size: int) -> None:
    model = build_backbone(name, embedding_size=128, input_size=input_size).eval()
    assert isinstance(model, Backbone)
    x = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        embedding, maps = model.forward_features(x, model.stage_names)
    assert embedding.shape == (2, 128)
    assert list(maps) == list(model.stage_names)
    assert _shapes(maps) == model.stage_shapes()
    assert model.stage_shapes() == model.stage_shapes(input_size)


@pytest.mark.parametrize(
    ("name", "expected_112", "expected_56"),
    [
        *[(n, IRESNET_SHAPES_112, IRESNET_SHAPES_56) for n in IRESNET_DEPTHS],
        ("mbf", MBF_SHAPES_112, MBF_SHAPES_56),
    ],
)
def test_known_stage_shapes(name: str, expected_112: dict, expected_56: dict) -> None:
    with torch.device("meta"):
        model = build_backbone(name)
    assert model.stage_names == tuple(expected_112)
    assert model.stage_shapes() == expected_112
    assert model.stage_shapes(112) == expected_112
    assert model.stage_shapes(56) == expected_56


def test_width_multiplier() -> None:
    model = build_backbone("iresnet18", width=0.5, input_size=56).eval()
    assert model.stage_shapes() == {
        "layer1": (32, 28, 28),
        "layer2": (64, 14, 14),
        "layer3": (128, 7, 7),
        "layer4": (256, 4, 4),
    }
    with torch.no_grad():
        embedding, maps = model.forward_features(torch.randn(2, 3, 56, 56), ["layer4"])
    assert embedding.shape == (2, 512) and maps["layer4"].shape == (2, 256, 4, 4)
    assert _params(model) < _params(build_backbone("iresnet18", input_size=56)) / 3


def test_mbf_scale() -> None:
    model = build_backbone("mbf", scale=1)
    assert model.stage_shapes()["stage3"] == (128, 14, 14)
    assert _state_shapes(model) == mbf_layout((1, 4, 6, 2), 1)


# --- forward_features --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_forward_features_equals_forward_in_eval(name: str) -> None:
    model = build_backbone(name).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        plain = model(x)
        embedding, maps = model.forward_features(x, model.stage_names[1:2])
    torch.testing.assert_close(embedding, plain, rtol=0, atol=0)
    assert list(maps) == [model.stage_names[1]]


def test_forward_features_order_single_name_and_gradients() -> None:
    model = build_backbone("iresnet18", input_size=56).train()
    x = torch.randn(4, 3, 56, 56)
    embedding, maps = model.forward_features(x, ["layer3", "layer2", "layer3"])
    assert list(maps) == ["layer3", "layer2"]
    maps["layer2"].square().mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.layer3[0].conv1.weight.grad is None  # downstream of layer2: untouched
    _, single = model.forward_features(x, "layer1")
    assert list(single) == ["layer1"]


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_forward_stages_takes_other_sides_and_matches_forward_features(name: str) -> None:
    model = build_backbone(name, input_size=56).eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        _, maps = model.forward_features(x, model.stage_names)
        last, same = model.forward_stages(x, model.stage_names)
        _, larger = model.forward_stages(torch.randn(2, 3, 112, 112), model.stage_names)
    for stage in model.stage_names:
        torch.testing.assert_close(same[stage], maps[stage], rtol=0, atol=0)
    torch.testing.assert_close(last, maps[model.stage_names[-1]], rtol=0, atol=0)
    assert _shapes(larger) == model.stage_shapes(112) != model.stage_shapes()
    with pytest.raises(ValueError, match="layer9"):
        model.forward_stages(x, ["layer9"])


@pytest.mark.parametrize("name", ["iresnet18", "mbf"])
def test_unknown_stage_is_a_clear_error(name: str) -> None:
    with torch.device("meta"):
        model = build_backbone(name)
    x = torch.empty(1, 3, 112, 112, device="meta")
    with pytest.raises(ValueError, match="layer9") as info:
        model.forward_features(x, ["layer9"])
    for stage in model.stage_names:
        assert stage in str(info.value)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = build_backbone("mbf")
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(1, 3, 56, 56))


# --- parameter counts and insightface layout -------------------------------------------------


@pytest.mark.parametrize("name", list(IRESNET_DEPTHS))
def test_iresnet_layout_and_parameter_count(name: str) -> None:
    with torch.device("meta"):
        model = build_backbone(name)
    layout = iresnet_layout(IRESNET_DEPTHS[name])
    assert _state_shapes(model) == layout
    assert _params(model) == _layout_params(layout)


@pytest.mark.parametrize("name", list(MBF_CONFIGS))
def test_mbf_layout_and_parameter_count(name: str) -> None:
    with torch.device("meta"):
        model = build_backbone(name)
    layout = mbf_layout(*MBF_CONFIGS[name])
    assert _state_shapes(model) == layout
    assert _params(model) == _layout_params(layout)


def test_published_parameter_counts() -> None:
    """insightface's r50 / r100 (512-d, 112x112): 43.6M and 65.2M parameters."""
    r50 = _layout_params(iresnet_layout(IRESNET_DEPTHS["iresnet50"]))
    r100 = _layout_params(iresnet_layout(IRESNET_DEPTHS["iresnet100"]))
    assert r50 == 43_590_848 and round(r50 / 1e6, 1) == 43.6
    assert r100 == 65_156_160 and round(r100 / 1e6, 1) == 65.2


def test_iresnet50_insightface_keys() -> None:
    """Spot checks of arcface_torch key names, written out by hand."""
    with torch.device("meta"):
        keys = set(build_backbone("iresnet50").state_dict())
    for key in [
        "conv1.weight",
        "bn1.running_mean",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_var",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.bias",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.num_batches_tracked",
        "layer3.13.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_var",
    ]:
        assert key in keys
    assert "layer1.1.downsample.0.weight" not in keys
    assert "layer3.14.conv1.weight" not in keys


def test_input_size_changes_the_head_only() -> None:
    with torch.device("meta"):
        iresnet = build_backbone("iresnet50", input_size=56)
        mobile = build_backbone("mbf", input_size=56)
    assert _state_shapes(iresnet) == iresnet_layout(IRESNET_DEPTHS["iresnet50"], side=4)
    assert _state_shapes(mobile) == mbf_layout((1, 4, 6, 2), 2, side=4)


def test_arcface_torch_conventions() -> None:
    model = build_backbone("iresnet18", dropout=0.2)
    assert not model.features.weight.requires_grad
    assert torch.all(model.features.weight == 1)
    assert model.dropout.p == 0.2
    # a state_dict round trip into a fresh model is exact
    fresh = build_backbone("iresnet18", dropout=0.2)
    fresh.load_state_dict(model.state_dict(), strict=True)
