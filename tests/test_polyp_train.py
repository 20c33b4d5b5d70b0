"""Training-side pieces of the polyp model: network variants, losses, augmentation, export.

Training needs the optional ``train`` extra (torch, onnx); users of the runtime never install
it, so these tests are skipped without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from telediag.models.polyp_seg import train as T  # noqa: E402


def _net(deep: bool, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return T.build_model(deep)


def test_deep_supervision_heads_only_in_training() -> None:
    net = _net(True)
    x = torch.randn(2, 3, 64, 64)
    net.train()
    out, aux = net(x)
    assert out.shape == (2, 1, 32, 32)
    assert [a.shape[-1] for a in aux] == [4, 8, 16]  # 1/16, 1/8, 1/4 of the input
    net.eval()
    plain = _net(False, seed=1).eval()
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("aux.") for k in unexpected)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x))  # the exported graph ignores the heads


def test_boundary_weight_matches_direct_pooling() -> None:
    g = (torch.rand(3, 1, 70, 50, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    f = torch.nn.functional
    want = 1 + 5 * torch.abs(f.avg_pool2d(g, 31, 1, 15, count_include_pad=False) - g)
    torch.testing.assert_close(T._boundary_weight(torch, g), want, atol=1e-5, rtol=0)


def test_structure_loss_hand_computed() -> None:
    # all-foreground target: weights are 1, p = sigmoid(c) everywhere, N pixels
    n, c = 16 * 16, 0.3
    g = torch.ones(1, 1, 16, 16)
    logits = torch.full((1, 1, 16, 16), c)
    p = 1 / (1 + np.exp(-c))
    want = -np.log(p) + 1 - (n * p + 1) / (n + 1)
    assert float(T._structure_loss(torch, logits, g)) == pytest.approx(want, rel=1e-5)
    # a confident correct prediction scores near 0, a confident wrong one high
    g2 = torch.zeros(1, 1, 32, 32)
    g2[..., 8:24, 8:24] = 1
    good = T._structure_loss(torch, (g2 * 2 - 1) * 20, g2)
    bad = T._structure_loss(torch, (1 - g2 * 2) * 20, g2)
    assert float(good) < 1e-3 and float(bad) > 10


@pytest.mark.parametrize("strong", [False, True])
def test_augment_keeps_image_and_mask_aligned(strong: bool) -> None:
    n = 24
    img = np.zeros((n, 64, 64, 3), np.uint8)
    mask = np.zeros((n, 64, 64), np.uint8)
    img[:, 20:44, 16:40] = 255
    mask[:, 20:44, 16:40] = 255
    gen = torch.Generator().manual_seed(3)
    x, m = T._augment(torch, torch.from_numpy(img), torch.from_numpy(mask), gen, 48, strong)
    assert x.shape == (n, 3, 48, 48) and m.shape == (n, 1, 48, 48)
    assert float(x.min()) >= 0 and float(x.max()) <= 255 and 0 <= float(m.min()) <= float(m.max()) <= 1
    lum = x.mean(1)
    for i in range(n):
        fg, bg = m[i, 0] > 0.5, m[i, 0] < 0.5
        if fg.sum() < 20 or bg.sum() < 20:
            continue  # a negative sample (empty mask) or a crop inside the square
        assert float(lum[i][fg].mean()) > float(lum[i][bg].mean()) + 40
    x2, m2 = T._augment(torch, torch.from_numpy(img), torch.from_numpy(mask),
                        torch.Generator().manual_seed(3), 48, strong)
    torch.testing.assert_close(x, x2)  # seeded: reproducible
    torch.testing.assert_close(m, m2)


@pytest.mark.slow
def test_export_matches_torch(tmp_path: Path) -> None:
    net = _net(True).eval()
    path = tmp_path / "m.onnx"
    T.export_onnx(net, path, size=64)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert T._check_onnx(torch, net, path, imgs) < 1e-4
    import onnx

    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    names = {i.name for i in model.graph.initializer}
    assert not any("aux" in k for k in names)


def test_configurable_network_matches_the_shipped_card() -> None:
    """``--widths/--dec/--blocks`` build the network the card describes, with its parameter count."""
    import json

    card = json.loads((Path(T.__file__).parent / "card.json").read_text())
    arch = card["architecture"]
    net = T.build_model(False, tuple(arch["widths"]), tuple(arch["decoder"]), tuple(arch["blocks"]))
    assert sum(p.numel() for p in net.parameters()) == arch["n_params"]
    # the default arguments still build the 0.1.0 network (checkpoints of it keep loading)
    assert sum(p.numel() for p in T.build_model().parameters()) == 508481
    size = card["input"]["size"]
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 3, size, size))
    stride = card["variants"]["fp32"]["output_stride"]  # the trained network = the fp32 variant
    assert list(out.shape[1:]) == [1, size // stride, size // stride]
    # blocks per stage really add residual blocks
    deeper = T.build_model(False, blocks=(1, 2, 1, 3))
    assert [len(s) - 1 for s in deeper.stages] == [1, 2, 1, 3]
