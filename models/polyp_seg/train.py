"""Train the polyp segmentation network on Kvasir-SEG and export it to ONNX.

Network: a compact residual U-Net (about 0.5 M parameters), see :func:`build_model`.
Four stride-2 encoder stages (widths 16-24-40-64-96, one residual block each), a global-pool
context term at 1/32 scale, and a light decoder (1x1 reduce, bilinear x2, concat skip, 3x3 conv)
back to 1/2 of the input resolution; a 1x1 head gives one logit per pixel. The exported graph
holds the input normalisation and the sigmoid, so it maps RGB pixel values 0-255 straight to
a polyp probability map at half the input resolution.

Training (Kvasir-SEG ``train`` split, 800 images; checkpoint selected on ``validation``, 100
images, as the split is meant to be used): Dice + BCE loss, AdamW with a cosine learning-rate
schedule over a wall-clock budget, bf16 autocast with channels-last tensors (oneDNN/AMX on a
recent Xeon), an exponential moving average of the weights (the EMA weights are evaluated and
exported). Augmentation on the fly in torch: random affine (scale 0.7-1.4, rotation by a
multiple of 90 degrees plus +-25 degrees, translation, flips) cropped to 192x192 from the
cached 256x256 images, brightness/contrast/saturation/gamma/channel-gain jitter, Gaussian noise,
and a few blank or noise frames with empty masks so that a blank frame yields no polyp.
Validation is scored as Kvasir-SEG papers report it: per-image Dice and IoU at the original
352x352 resolution (the probability map upsampled bilinearly, thresholded at 0.5), averaged.

Data: Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020 (Simula; research and
educational use only).

Reproduce the shipped model (CPU, 2 threads, about 65 minutes)::

    nice -n 10 python -m telediag.models.polyp_seg.train --data ../shared/data/kvasir-seg \\
        --work /tmp/polyp --budget-min 62 --out models/polyp_seg

Training needs the ``train`` extra (``pip install torch==2.13.0 onnx``) and Pillow for JPEG
decoding; the runtime (:mod:`telediag.models.polyp_seg`) needs neither.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.models.polyp_seg._resize import resize

__all__ = ["build_model", "export_onnx", "load_split", "main"]

NET_SIZE = 256  # network input (square); the output is NET_SIZE // 2
CROP = 192  # training crop
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, applied inside the exported graph
STD = (0.229, 0.224, 0.225)
WIDTHS = (16, 24, 40, 64, 96)
DEC = (16, 24, 40, 64)


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "training the polyp model needs torch: pip install torch==2.13.0 onnx"
        ) from e
    return torch


def load_split(root: Path, split: str, size: int = NET_SIZE) -> dict[str, NDArray[Any]]:
    """Read one Kvasir-SEG split: images resized to ``size`` and masks at both resolutions.

    Returns ``img`` (N, size, size, 3) uint8, ``mask`` (N, size, size) uint8 (soft, 0-255,
    the binary 352x352 mask resampled like the image), ``mask_full`` (N, 352, 352) bool
    (threshold 127 as the dataset README says) and ``names``.
    """
    from PIL import Image

    img_dir, mask_dir = root / split / "images", root / split / "masks"
    names = sorted(p.name for p in img_dir.glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no images in {img_dir}")
    imgs, masks, fulls = [], [], []
    for n in names:
        rgb = np.asarray(Image.open(img_dir / n).convert("RGB"))
        m = np.asarray(Image.open(mask_dir / n).convert("L")) > 127
        imgs.append(np.clip(np.rint(resize(rgb, size, size)), 0, 255).astype(np.uint8))
        masks.append(
            np.clip(np.rint(resize(m.astype(np.float32) * 255, size, size)), 0, 255).astype(
                np.uint8
            )
        )
        fulls.append(m)
    return {
        "img": np.stack(imgs),
        "mask": np.stack(masks),
        "mask_full": np.stack(fulls),
        "names": np.array(names),
    }


def build_model() -> Any:
    """The compact residual U-Net (torch ``nn.Module``), logits at half resolution."""
    torch = _torch()
    nn = torch.nn
    functional = torch.nn.functional

    class CBR(nn.Sequential):  # type: ignore[misc,name-defined]
        def __init__(self, ci: int, co: int, k: int = 3, st: int = 1, act: bool = True):
            layers = [nn.Conv2d(ci, co, k, st, k // 2, bias=False), nn.BatchNorm2d(co)]
            if act:
                layers.append(nn.ReLU(inplace=True))
            super().__init__(*layers)

    class Res(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, c: int):
            super().__init__()
            self.b = nn.Sequential(CBR(c, c), CBR(c, c, act=False))

        def forward(self, x: Any) -> Any:
            return functional.relu(x + self.b(x))

    class PolypNet(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            w, d = WIDTHS, DEC
            self.stem = CBR(3, w[0], 3, 2)
            self.stages = nn.ModuleList(
                [nn.Sequential(CBR(w[i], w[i + 1], 3, 2), Res(w[i + 1])) for i in range(4)]
            )
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(w[4], w[4], 1))
            self.reduce = nn.ModuleList()
            self.fuse = nn.ModuleList()
            c = w[4]
            for i, dc in zip((3, 2, 1, 0), d[::-1], strict=True):
                self.reduce.append(CBR(c, dc, 1))
                self.fuse.append(CBR(dc + w[i], dc))
                c = dc
            self.head = nn.Conv2d(c, 1, 1)

        def forward(self, x: Any) -> Any:
            x = self.stem(x)
            skips = [x]
            for st in self.stages:
                x = st(x)
                skips.append(x)
            x = x + self.pool(x)
            for red, fuse, sk in zip(self.reduce, self.fuse, skips[-2::-1], strict=True):
                x = functional.interpolate(
                    red(x), size=sk.shape[-2:], mode="bilinear", align_corners=False
                )
                x = fuse(torch.cat([x, sk], 1))
            return self.head(x)

    return PolypNet()


class _Exported:
    """Wraps the network with normalisation (input 0-255 RGB) and sigmoid for export."""

    @staticmethod
    def make(net: Any) -> Any:
        torch = _torch()

        class Wrapped(torch.nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.net = net
                self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
                self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

            def forward(self, x: Any) -> Any:
                return torch.sigmoid(self.net((x - self.mean) * self.inv_std))

        return Wrapped().eval()


def _augment(torch: Any, img: Any, mask: Any, gen: Any) -> tuple[Any, Any]:
    """Random affine + photometric jitter of a uint8 batch -> (float image 0-1, soft mask)."""
    f = torch.nn.functional
    n = img.shape[0]
    x = img.permute(0, 3, 1, 2).float() / 255.0
    m = mask.unsqueeze(1).float() / 255.0

    def u(lo: float, hi: float) -> Any:
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    k90 = torch.randint(0, 4, (n,), generator=gen).float() * (math.pi / 2)
    ang = k90 + u(-25, 25) * math.pi / 180
    scale = torch.exp(u(math.log(0.7), math.log(1.4)))  # >1 zooms in
    sx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    crop = CROP / NET_SIZE
    cos, sin = torch.cos(ang) / scale * crop, torch.sin(ang) / scale * crop
    tx, ty = u(-0.25, 0.25), u(-0.25, 0.25)
    theta = torch.stack(
        [torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1
    )
    grid = f.affine_grid(theta, [n, 3, CROP, CROP], align_corners=False)
    x = f.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = f.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # photometric jitter
    gray = x.mean(1, keepdim=True)
    sat = u(0.6, 1.4).view(n, 1, 1, 1)
    x = gray + (x - gray) * sat
    x = x * (1 + 0.08 * torch.randn(n, 3, 1, 1, generator=gen))  # channel gains
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.7, 1.3).view(n, 1, 1, 1) + mean * u(0.7, 1.3).view(n, 1, 1, 1)
    x = x.clamp(0, 1) ** u(0.75, 1.33).view(n, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.03).view(n, 1, 1, 1)
    # a few negatives: flat or noisy frames with no polyp
    neg = torch.rand(n, generator=gen) < 0.04
    if bool(neg.any()):
        k = int(neg.sum())
        flat = torch.rand(k, 3, 1, 1, generator=gen) * 0.5
        noise = torch.rand(k, 1, 1, 1, generator=gen) * 0.2 * torch.rand(
            k, 3, CROP, CROP, generator=gen
        )
        x[neg] = flat + noise
        m[neg] = 0.0
    return x.clamp(0, 1) * 255.0, m


def _loss(torch: Any, logits: Any, target: Any) -> Any:
    f = torch.nn.functional
    logits = f.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    bce = f.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def _evaluate(torch: Any, wrapped: Any, val: dict[str, NDArray[Any]]) -> dict[str, float]:
    """Per-image Dice/IoU at 352x352 (prob map upsampled bilinearly, threshold 0.5), mean."""
    from telediag.evaluation.seg_metrics import mean_dice_iou

    f = torch.nn.functional
    wrapped.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(val["img"]), 25):
            x = torch.from_numpy(val["img"][i : i + 25]).permute(0, 3, 1, 2).float()
            p = wrapped(x.contiguous(memory_format=torch.channels_last))
            h, w = val["mask_full"].shape[1:]
            p = f.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
            probs.append(p[:, 0].numpy())
    pred = np.concatenate(probs) > 0.5
    d, j = mean_dice_iou(pred, val["mask_full"])
    return {"dice": d, "iou": j}


def export_onnx(net: Any, path: Path, size: int = NET_SIZE) -> None:
    """Export ``net`` (normalisation + sigmoid included) to ONNX, opset 17, dynamic batch."""
    torch = _torch()
    wrapped = _Exported.make(copy.deepcopy(net).float().to(memory_format=torch.contiguous_format))
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        wrapped,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["prob"],
        dynamic_axes={"image": {0: "batch"}, "prob": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/polyp"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    ap.add_argument("--budget-min", type=float, default=62.0, help="training wall-clock")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true", help="export the best checkpoint")
    ap.add_argument("--card-only", action="store_true", help="rewrite card.json only")
    a = ap.parse_args(argv)
    if a.card_only:
        write_card(a.out, a.data / "validation")
        return 0
    torch = _torch()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    a.work.mkdir(parents=True, exist_ok=True)
    cache = a.work / f"kvasir_{NET_SIZE}.npz"
    if cache.exists():
        z = np.load(cache)
        tr = {k[3:]: z[k] for k in z.files if k.startswith("tr_")}
        va = {k[3:]: z[k] for k in z.files if k.startswith("va_")}
    else:
        tr, va = load_split(a.data, "train"), load_split(a.data, "validation")
        arrs: dict[str, Any] = {f"tr_{k}": v for k, v in tr.items()}
        arrs.update({f"va_{k}": v for k, v in va.items()})
        np.savez(cache, **arrs)
    log_path = a.work / "train_log.jsonl"
    best_path = a.work / "best.pt"
    net = build_model()
    if not a.export_only:
        net = net.to(memory_format=torch.channels_last)
        ema = copy.deepcopy(net)
        for p in ema.parameters():
            p.requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
        gen = torch.Generator().manual_seed(a.seed)
        timg, tmask = torch.from_numpy(tr["img"]), torch.from_numpy(tr["mask"])
        n = len(timg)
        budget = a.budget_min * 60.0
        t0 = time.monotonic()
        best, epoch, step = -1.0, 0, 0
        log_path.write_text("")
        while time.monotonic() - t0 < budget:
            net.train()
            perm = torch.randperm(n, generator=gen)
            tot = 0.0
            for b in range(n // a.batch):
                frac = min((time.monotonic() - t0) / budget, 1.0)
                warm = min(1.0, (step + 1) / 100)
                lr = a.lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
                for g in opt.param_groups:
                    g["lr"] = lr
                idx = perm[b * a.batch : (b + 1) * a.batch]
                x, m = _augment(torch, timg[idx], tmask[idx], gen)
                x = ((x - torch.tensor(MEAN).view(1, 3, 1, 1) * 255) / (
                    torch.tensor(STD).view(1, 3, 1, 1) * 255
                )).contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = net(x)
                loss = _loss(torch, logits.float(), m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                tot += float(loss.detach())
                dec = min(a.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, pn in zip(ema.state_dict().values(), net.state_dict().values(), strict=True):
                        if pe.dtype.is_floating_point:
                            pe.mul_(dec).add_(pn.detach(), alpha=1 - dec)
                        else:
                            pe.copy_(pn)
            epoch += 1
            res = _evaluate(torch, _Exported.make(ema), va)
            rec = {
                "epoch": epoch, "step": step, "minutes": round((time.monotonic() - t0) / 60, 2),
                "lr": lr, "loss": tot / (n // a.batch), "val_dice": res["dice"], "val_iou": res["iou"],
            }
            if res["dice"] > best:
                best = res["dice"]
                torch.save({"state": ema.state_dict(), "record": rec}, best_path)
                rec["best"] = True
            torch.save({"state": ema.state_dict(), "record": rec}, a.work / "last.pt")
            with log_path.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    ck = torch.load(best_path, weights_only=True)
    net.load_state_dict(ck["state"])
    net = net.float().eval()
    res = _evaluate(torch, _Exported.make(net), va)
    a.out.mkdir(parents=True, exist_ok=True)
    onnx_path = a.out / "polyp_seg.onnx"
    export_onnx(net, onnx_path)
    ort_diff = _check_onnx(torch, net, onnx_path, va["img"][:8])
    n_params = int(sum(p.numel() for p in net.parameters()))
    curve = [json.loads(s) for s in log_path.read_text().splitlines() if s.strip()]
    summary = {
        "best_record": ck["record"],
        "val_dice_torch": res["dice"],
        "val_iou_torch": res["iou"],
        "n_params": n_params,
        "onnx_vs_torch_max_abs_diff": ort_diff,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "curve": [
            {k: r[k] for k in ("epoch", "minutes", "loss", "val_dice", "val_iou")} for r in curve
        ],
    }
    (a.out / "training_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}), flush=True)
    write_card(a.out, a.data / "validation")
    return 0


def _check_onnx(torch: Any, net: Any, path: Path, imgs: NDArray[np.uint8]) -> float:
    """Max |onnxruntime - torch| of the exported probability maps on a few images."""
    import onnxruntime as ort

    x = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        ref = _Exported.make(net)(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x})[0]
    diff = float(np.abs(out - ref).max())
    if diff > 1e-3:
        raise RuntimeError(f"onnxruntime output differs from torch by {diff}")
    return diff


def write_card(out: Path, val_dir: Path, n_latency: int = 200) -> dict[str, Any]:
    """Write ``card.json`` from ``training_summary.json`` plus a runtime evaluation.

    The runtime (:class:`telediag.models.polyp_seg.PolypSegmenter`, PyAV JPEG decoding) is
    scored on ``val_dir`` and timed on 640x480 frames with one ONNX Runtime thread.
    """
    from telediag.evaluation.seg_metrics import evaluate_folder, read_rgb
    from telediag.models.polyp_seg import PolypSegmenter

    summary = json.loads((out / "training_summary.json").read_text())
    onnx_path = out / "polyp_seg.onnx"
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card: dict[str, Any] = {
        "name": "polyp_seg",
        "version": "0.1.0",
        "task": "binary polyp segmentation of colonoscopy frames",
        "file": "polyp_seg.onnx",
        "sha256": sha,
        "opset": 17,
        "input": {
            "name": "image", "shape": ["batch", 3, NET_SIZE, NET_SIZE], "size": NET_SIZE,
            "dtype": "float32", "layout": "NCHW", "channel_order": "RGB", "range": [0, 255],
            "resize": "anti-aliased bilinear (triangle filter, PIL BILINEAR equivalent) of the "
            "whole frame to 256x256, aspect ratio not kept",
            "normalisation": "inside the graph: (x / 255 - mean) / std, "
            f"mean={list(MEAN)}, std={list(STD)}",
        },
        "output": {
            "name": "prob", "shape": ["batch", 1, NET_SIZE // 2, NET_SIZE // 2],
            "dtype": "float32", "range": [0, 1],
            "meaning": "per-pixel polyp probability (sigmoid) at half the input resolution; "
            "the runtime upsamples it bilinearly to the frame size and thresholds at 0.5",
        },
        "architecture": {
            "type": "residual U-Net, 4 stride-2 stages, global-pool context, bilinear decoder",
            "widths": list(WIDTHS), "decoder": list(DEC), "n_params": summary["n_params"],
        },
        "training_data": {
            "dataset": "Kvasir-SEG (train split, 800 images, 352x352)",
            "selection": "checkpoint with the best Dice on the validation split (100 images)",
            "licence": "Simula Research Laboratory: research and educational use only; any "
            "other use (including commercial) needs prior written permission",
            "citation": "D. Jha, P. H. Smedsrud, M. A. Riegler, P. Halvorsen, T. de Lange, "
            "D. Johansen, H. D. Johansen. Kvasir-SEG: A Segmented Polyp Dataset. MultiMedia "
            "Modeling (MMM) 2020, LNCS 11962, pp. 451-462.",
        },
        "training": {
            "best_epoch": summary["best_record"]["epoch"],
            "minutes": summary["best_record"]["minutes"],
            "curve": summary["curve"],
        },
        "onnx_vs_torch_max_abs_diff": summary.get("onnx_vs_torch_max_abs_diff"),
        "reproduce": "nice -n 10 python -m telediag.models.polyp_seg.train --data "
        "../shared/data/kvasir-seg --work /tmp/polyp --budget-min 62 --out models/polyp_seg",
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    seg = PolypSegmenter(onnx_path, out / "card.json", threads=1).load()
    res = evaluate_folder(lambda x: seg.predict(x).mask, val_dir)
    frame = read_rgb(sorted((val_dir / "images").iterdir())[0])
    frame = np.ascontiguousarray(
        np.clip(np.rint(resize(frame, 480, 640)), 0, 255).astype(np.uint8)
    )
    for _ in range(10):
        seg.predict(frame)
    ts, cpu = [], []
    for _ in range(n_latency):
        t, c = time.perf_counter(), time.thread_time()
        seg.predict(frame)
        cpu.append(time.thread_time() - c)
        ts.append(time.perf_counter() - t)
    card["metrics"] = {
        "split": "Kvasir-SEG validation (100 images), used for checkpoint selection",
        "protocol": "mean over images of per-image Dice and IoU at 352x352, threshold 0.5",
        "dice": round(res["dice"], 4), "iou": round(res["iou"], 4),
        "dice_torch_pil": round(summary["val_dice_torch"], 4),
        "iou_torch_pil": round(summary["val_iou_torch"], 4),
        "command": "python -m telediag.evaluation.seg_metrics --data "
        "../shared/data/kvasir-seg/validation",
    }
    card["latency_cpu"] = {
        "frame": "640x480 RGB uint8, full predict() (resize, network, upsample, threshold, boxes)",
        "threads": 1, "p50_ms": round(float(np.percentile(ts, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(ts, 99)) * 1e3, 2),
        "cpu_time_p50_ms": round(float(np.percentile(cpu, 50)) * 1e3, 2),
        "note": "wall-clock figures include waiting for the shared cores; cpu_time is the "
        "calling thread's CPU time (onnxruntime runs in it with one thread)",
        "machine": "shared 2-core Intel Xeon (AVX-512), other jobs running",
    }
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({"metrics": card["metrics"], "latency_cpu": card["latency_cpu"]}), flush=True)
    return card


if __name__ == "__main__":
    raise SystemExit(main())
