"""Distil the faster ``student`` variant of the polyp model from the 0.2.0 network (``fp32``).

Where the time goes (ONNX Runtime profile of 0.2.0, one thread, 256x256 input): the last
decoder level, which works at half the input resolution (a 3x3 convolution over 48 channels at
128x128: about a quarter of the network's multiply-adds, plus the bilinear upsampling and the
concatenation feeding it), costs about 30 % of the network's time. The student keeps the
teacher's encoder and decoder unchanged up to the quarter-resolution level and replaces the
last level and the 1x1 head by a light head at quarter resolution::

    teacher trunk (frozen, 0.2.0 weights) -> reduce.2 (1x1, 48->32) -> x2 bilinear -> concat skip
      -> fuse.2 (3x3, 64->32) -> head: 3x3 32->16, ReLU, 1x1 16->1 -> sigmoid   (at S/4)

``reduce.2`` and ``fuse.2`` start from the teacher's weights (batch norm already folded into
the convolutions by the ONNX export) and are fine-tuned with the new head. Training is
knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015):
binary cross-entropy against the teacher's probability map, plus the ground-truth mask
(BCE + soft Dice) of the Kvasir-SEG **train** split; the frozen trunk's outputs for the 800
training images and their horizontal mirrors are computed once with ONNX Runtime, so the
fine-tuning runs on cached features (minutes on one CPU core, no GPU). The epoch is selected
on the validation split's mean per-image Dice at 352x352, as the teacher's checkpoint was.

The exported graph (``polyp_seg_student.onnx``) is the teacher's graph cut after the trunk
plus the new nodes, with dynamic height and width (any multiple of 32), and outputs the
probability map at a **quarter** of the input size (the runtime upsamples whatever it gets).

Run (needs the ``train`` extra: torch, onnx, Pillow)::

    nice -n 10 python -m telediag.models.polyp_seg.distill --data ../shared/data/kvasir-seg \\
        --out models/polyp_seg/polyp_seg_student.onnx --epochs 40 --threads 1

Data: Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020 (research and
educational use only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.models.polyp_seg._resize import resize

__all__ = ["TRUNK_OUT", "SKIP_OUT", "build_student_onnx", "main", "trunk_features"]

TEACHER = Path(__file__).with_name("polyp_seg.onnx")
TRUNK_OUT = "/net/fuse.1/fuse.1.2/Relu_output_0"  # 48 channels at S/8
SKIP_OUT = "/net/stages.0/stages.0.1/Relu_output_0"  # 32 channels at S/4
REDUCE_NODE = "/net/reduce.2/reduce.2.0/Conv"
FUSE_NODE = "/net/fuse.2/fuse.2.0/Conv"
HEAD_MID = 16


def _teacher_conv(model: Any, node_name: str) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Weight and bias of a Conv node of the teacher graph."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    return w, b


def trunk_features(
    teacher: Path, imgs: NDArray[np.uint8], threads: int = 1
) -> tuple[NDArray[np.float16], NDArray[np.float16], NDArray[np.float16]]:
    """Run the teacher on ``imgs`` (N, S, S, 3): trunk output, skip, teacher probability (fp16)."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(teacher))
    for name in (TRUNK_OUT, SKIP_OUT):
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    trunk, skip, prob = [], [], []
    for img in imgs:
        x = np.ascontiguousarray(img.transpose(2, 0, 1))[None].astype(np.float32)
        p, t, s = sess.run(["prob", TRUNK_OUT, SKIP_OUT], {"image": x})
        trunk.append(t[0].astype(np.float16))
        skip.append(s[0].astype(np.float16))
        prob.append(p[0, 0].astype(np.float16))
    return np.stack(trunk), np.stack(skip), np.stack(prob)


def _student_module(torch: Any, teacher_model: Any) -> Any:
    nn, functional = torch.nn, torch.nn.functional

    class Head(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.reduce = nn.Conv2d(48, 32, 1)
            self.fuse = nn.Conv2d(64, 32, 3, padding=1)
            self.mid = nn.Conv2d(32, HEAD_MID, 3, padding=1)
            self.out = nn.Conv2d(HEAD_MID, 1, 1)
            for conv, name in ((self.reduce, REDUCE_NODE), (self.fuse, FUSE_NODE)):
                w, b = _teacher_conv(teacher_model, name)
                conv.weight.data.copy_(torch.from_numpy(w))
                conv.bias.data.copy_(torch.from_numpy(b))

        def forward(self, trunk: Any, skip: Any) -> Any:
            r = functional.relu(self.reduce(trunk))
            r = functional.interpolate(r, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = functional.relu(self.fuse(torch.cat([r, skip], 1)))
            return self.out(functional.relu(self.mid(x)))  # logits at S/4

    return Head()


def build_student_onnx(teacher: Path, head: Any, out: Path) -> None:
    """The teacher graph cut at the trunk + the trained head's nodes, dynamic H/W, opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(teacher))
    d = m.graph.input[0].type.tensor_type.shape.dim
    d[2].dim_param, d[3].dim_param = "height", "width"
    o = m.graph.output[0].type.tensor_type.shape.dim
    o[2].dim_param, o[3].dim_param = "prob_height", "prob_width"
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m)
    ex = onnx.utils.Extractor(m)
    sub = ex.extract_model(["image"], [TRUNK_OUT, SKIP_OUT])
    g = sub.graph
    del g.output[:]
    del g.value_info[:]
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}
    for k, v in sd.items():
        g.initializer.append(numpy_helper.from_array(v, name=f"student.{k}"))
    g.initializer.append(numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32),
                                                 name="student.scales"))
    nodes = [
        helper.make_node("Conv", [TRUNK_OUT, "student.reduce.weight", "student.reduce.bias"],
                         ["s_red"], name="/student/reduce", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["s_red"], ["s_red_relu"], name="/student/reduce_relu"),
        helper.make_node("Resize", ["s_red_relu", "", "student.scales"], ["s_up"], name="/student/up",
                         mode="linear", coordinate_transformation_mode="half_pixel"),
        helper.make_node("Concat", ["s_up", SKIP_OUT], ["s_cat"], name="/student/concat", axis=1),
        helper.make_node("Conv", ["s_cat", "student.fuse.weight", "student.fuse.bias"], ["s_fuse"],
                         name="/student/fuse", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s_fuse"], ["s_fuse_relu"], name="/student/fuse_relu"),
        helper.make_node("Conv", ["s_fuse_relu", "student.mid.weight", "student.mid.bias"], ["s_mid"],
                         name="/student/mid", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s_mid"], ["s_mid_relu"], name="/student/mid_relu"),
        helper.make_node("Conv", ["s_mid_relu", "student.out.weight", "student.out.bias"], ["s_logit"],
                         name="/student/out", kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["s_logit"], ["prob"], name="/student/sigmoid"),
    ]
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info("prob", TensorProto.FLOAT,
                                                  ["batch", 1, "prob_height", "prob_width"]))
    sub.opset_import[0].version = max(sub.opset_import[0].version, 17)
    onnx.checker.check_model(sub)
    onnx.save(sub, str(out))


def _dice_352(prob_low: NDArray[np.float32], masks: NDArray[np.bool_]) -> float:
    """Mean per-image Dice at 352x352 (runtime resize of the low-res map, threshold 0.5)."""
    ds = []
    for p, t in zip(prob_low, masks, strict=True):
        m = resize(p, t.shape[0], t.shape[1]) > 0.5
        inter = np.count_nonzero(m & t)
        tot = np.count_nonzero(m) + np.count_nonzero(t)
        ds.append(1.0 if tot == 0 else 2.0 * inter / tot)
    return float(np.mean(ds))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Distil the polyp_seg student head (CPU)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg"))
    ap.add_argument("--teacher", type=Path, default=TEACHER)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("polyp_seg_student.onnx"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/polyp_student_cache.npz"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term")
    a = ap.parse_args(argv)

    import onnx
    import torch

    from telediag.models.polyp_seg.train import load_split

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.time()
    if a.cache.exists():
        z = np.load(a.cache)
        c = {k: z[k] for k in z.files}
    else:
        tr, va = load_split(a.data, "train"), load_split(a.data, "validation")
        imgs = np.concatenate([tr["img"], tr["img"][:, :, ::-1]])  # + horizontal mirrors
        t_tr, s_tr, p_tr = trunk_features(a.teacher, imgs, a.threads)
        t_va, s_va, p_va = trunk_features(a.teacher, va["img"], a.threads)
        gt = tr["mask"].astype(np.float32) / 255.0  # soft 256x256 masks
        gt = np.concatenate([gt, gt[:, :, ::-1]])
        gt128 = np.stack([resize(m, 128, 128) for m in gt]).astype(np.float16)
        c = {"t_tr": t_tr, "s_tr": s_tr, "p_tr": p_tr, "g_tr": gt128, "t_va": t_va, "s_va": s_va,
             "p_va": p_va, "m_va": va["mask_full"]}
        np.savez(a.cache, **c)
    print(f"features ready in {time.time() - t_start:.0f} s", flush=True)
    teacher_model = onnx.load(str(a.teacher))
    head = _student_module(torch, teacher_model)
    opt = torch.optim.AdamW(head.parameters(), lr=a.lr, weight_decay=1e-4)
    n = len(c["t_tr"])
    steps = a.epochs * ((n + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    functional = torch.nn.functional

    def val_dice() -> float:
        head.eval()
        with torch.no_grad():
            probs = []
            for i in range(0, len(c["t_va"]), 25):
                lo = head(torch.from_numpy(c["t_va"][i:i + 25].astype(np.float32)),
                          torch.from_numpy(c["s_va"][i:i + 25].astype(np.float32)))
                probs.append(torch.sigmoid(lo)[:, 0].numpy())
        head.train()
        return _dice_352(np.concatenate(probs), c["m_va"])

    best = (val_dice(), 0, {k: v.clone() for k, v in head.state_dict().items()})
    curve = [{"epoch": 0, "val_dice": round(best[0], 4)}]
    print(f"epoch 0 (teacher weights, new head untrained) val Dice {best[0]:.4f}", flush=True)
    rng = np.random.default_rng(a.seed)
    for ep in range(1, a.epochs + 1):
        order = rng.permutation(n)
        tot = 0.0
        for i in range(0, n, a.batch):
            idx = np.sort(order[i:i + a.batch])
            tt = torch.from_numpy(c["t_tr"][idx].astype(np.float32))
            ss = torch.from_numpy(c["s_tr"][idx].astype(np.float32))
            pt = torch.from_numpy(c["p_tr"][idx].astype(np.float32))[:, None]
            gt = torch.from_numpy(c["g_tr"][idx].astype(np.float32))[:, None]
            logit = functional.interpolate(head(tt, ss), scale_factor=2.0, mode="bilinear",
                                           align_corners=False)
            kd = functional.binary_cross_entropy_with_logits(logit, pt)
            bce = functional.binary_cross_entropy_with_logits(logit, gt)
            p = torch.sigmoid(logit)
            dice = 1 - (2 * (p * gt).sum((2, 3)) + 1) / (p.sum((2, 3)) + gt.sum((2, 3)) + 1)
            loss = a.alpha * kd + (1 - a.alpha) * (bce + dice.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        vd = val_dice()
        curve.append({"epoch": ep, "loss": round(tot / n, 4), "val_dice": round(vd, 4)})
        print(f"epoch {ep} loss {tot / n:.4f} val Dice {vd:.4f} ({time.time() - t_start:.0f} s)",
              flush=True)
        if vd > best[0]:
            best = (vd, ep, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    torch.save(best[2], a.out.with_suffix(".pt"))  # the head's weights, kept if export fails
    build_student_onnx(a.teacher, head, a.out)
    summary = {"best_epoch": best[1], "val_dice_352": round(best[0], 4), "epochs": a.epochs,
               "lr": a.lr, "batch": a.batch, "alpha": a.alpha, "seed": a.seed,
               "minutes": round((time.time() - t_start) / 60, 2), "curve": curve,
               "selection": "epoch with the best mean per-image validation Dice at 352x352"}
    a.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
