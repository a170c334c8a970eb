"""Microbenchmark of the fused micro adapter (bilinear resize + 1x1 conv).

Compares, at the same thread count and on the same inputs:
  fused     nvp_rt.ops.resize_conv1x1 (one pass, cheaper order picked per shape)
  torch     F.interpolate(bilinear) then F.conv2d (trilinear + conv3d for 5-D)
  ort       ONNX Runtime on a Resize(linear, half_pixel) + Conv graph
over INR-tap -> backbone-stage shapes. Each iteration runs every contender
in blocks, rotating (see time_rounds), so they share the machine's noise; the
table gives medians of many calls and the ratios of the medians. On a CUDA machine it also
times the CUDA kernel against torch's two-op CUDA path and reports achieved
bandwidth against the device's measured copy bandwidth.

    python bench/resize_conv.py [--threads 2] [--iters 200] [--out bench/results]
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

import nvp_rt
from nvp_rt import ops
from report import Run, make_parser

# (name, input shape, C_out, (Ho, Wo)): INR taps feeding backbone stage inputs.
SHAPES = [
    ("hnerv-tap->stem", (1, 48, 40, 80), 24, (112, 112)),
    ("hnerv-tap->res2", (1, 96, 20, 40), 256, (56, 56)),
    ("batch8->stage", (8, 64, 45, 80), 64, (56, 56)),
    ("clip-5d->stage", (1, 64, 8, 45, 80), 64, (56, 56)),
    ("wide-down", (1, 128, 90, 160), 40, (28, 28)),
]


@dataclass
class Row:
    name: str
    x_shape: tuple
    c_out: int
    size: tuple
    order: str
    fused_ms: float
    fused_iqr_ms: float
    torch_ms: float
    ort_ms: float
    torch_ratio: float  # torch median / fused median
    ort_ratio: float
    max_rel_diff: float  # between the three outputs


def torch_two_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, size) -> torch.Tensor:
    if x.dim() == 5:
        r = F.interpolate(x, size=(x.shape[2], *size), mode="trilinear", align_corners=False)
        return F.conv3d(r, w[:, :, None, None, None], b)
    r = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return F.conv2d(r, w[:, :, None, None], b)


def ort_two_op(x: np.ndarray, w: np.ndarray, b: np.ndarray, size, threads: int) -> ort.InferenceSession:
    out_shape = list(x.shape[:-2]) + list(size)
    kernel = w.reshape(w.shape + (1,) * (x.ndim - 2))
    graph = helper.make_graph(
        [
            helper.make_node(
                "Resize",
                ["x", "", "", "sizes"],
                ["r"],
                mode="linear",
                coordinate_transformation_mode="half_pixel",
            ),
            helper.make_node("Conv", ["r", "w", "b"], ["y"]),
        ],
        "resize_conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(out_shape, np.int64), "sizes"),
            numpy_helper.from_array(kernel, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def time_rounds(fns: dict, iters: int, warmup: int, block: int = 20) -> dict[str, list[float]]:
    """Rounds of `block` back-to-back calls per contender (A..A B..B C..C, repeated).

    Side by side in one run, yet each contender runs in steady state: thread
    pools (torch's OpenMP, ORT's, ours) spin for a while after a call, and
    strict interleaving would charge that spinning to whoever runs next. The
    first `warmup` calls of each block are not recorded.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    rounds = max(1, -(-iters // block))
    for _ in tqdm(range(rounds), leave=False, desc="rounds"):
        for k, fn in fns.items():
            for i in range(warmup + block):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if i >= warmup:
                    times[k].append(dt * 1e3)
    return times


def iqr(v: list[float]) -> float:
    q = np.percentile(v, [25, 75])
    return float(q[1] - q[0])


def bench_cpu(threads: int, iters: int, warmup: int) -> list[Row]:
    torch.set_num_threads(threads)
    rows = []
    rng = np.random.default_rng(0)
    for name, xs, c_out, size in tqdm(SHAPES, desc="cpu shapes", leave=False):
        x = rng.standard_normal(xs, dtype=np.float32)
        w = rng.standard_normal((c_out, xs[1]), dtype=np.float32) / np.float32(np.sqrt(xs[1]))
        b = rng.standard_normal(c_out, dtype=np.float32)
        xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        sess = ort_two_op(x, w, b, size, threads)
        out = np.empty(ops.resize_conv1x1(x, w, b, size, num_threads=threads).shape, np.float32)
        fns = {
            "fused": lambda: ops.resize_conv1x1(x, w, b, size, num_threads=threads, out=out),  # noqa: B023 (timed in this iteration)
            "torch": lambda: torch_two_op(xt, wt, bt, size),  # noqa: B023 (timed in this iteration)
            "ort": lambda: sess.run(["y"], {"x": x}),  # noqa: B023 (timed in this iteration)
        }
        with torch.inference_mode():
            y_fused = ops.resize_conv1x1(x, w, b, size, num_threads=threads)
            y_torch = torch_two_op(xt, wt, bt, size).numpy()
            y_ort = sess.run(["y"], {"x": x})[0]
            times = time_rounds(fns, iters, warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            Row(
                name,
                xs,
                c_out,
                size,
                ops.chosen_order(xs, w.shape, size),
                med["fused"],
                iqr(times["fused"]),
                med["torch"],
                med["ort"],
                med["torch"] / med["fused"],
                med["ort"] / med["fused"],
                max(rel_diff(y_fused, y_torch), rel_diff(y_ort, y_torch)),
            )
        )
    return rows


def bench_cuda(iters: int, warmup: int) -> list[dict]:
    """CUDA kernel vs torch's two-op CUDA path, with achieved bandwidth."""
    dev = torch.device("cuda")
    stream = torch.cuda.current_stream()
    copy_src = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    copy_dst = torch.empty_like(copy_src)

    def timed(fn) -> list[float]:
        out = []
        for i in range(warmup + iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            if i >= warmup:
                out.append(start.elapsed_time(end))
        return out

    copy_ms = statistics.median(timed(lambda: copy_dst.copy_(copy_src)))
    copy_gbs = 2 * copy_src.numel() / copy_ms / 1e6  # read + write
    rows = []
    for dtype in (torch.float32, torch.float16):
        for name, xs, c_out, size in SHAPES:
            x = torch.randn(xs, device=dev, dtype=dtype)
            w = (torch.randn(c_out, xs[1], device=dev) / xs[1] ** 0.5).to(dtype)
            b = torch.randn(c_out, device=dev, dtype=dtype)
            y = torch.empty((xs[0], c_out, *xs[2:-2], *size), device=dev, dtype=dtype)
            fused = timed(lambda: ops.resize_conv1x1(x, w, b, size, out=y, stream=stream.cuda_stream))  # noqa: B023 (timed in this iteration)
            two_op = timed(lambda: torch_two_op(x, w, b, size))  # noqa: B023 (timed in this iteration)
            ref = torch_two_op(x.double(), w.double(), b.double(), size)
            err = float((y.double() - ref).abs().max() / ref.abs().max())
            moved = (x.numel() + y.numel()) * x.element_size()
            f_ms, t_ms = statistics.median(fused), statistics.median(two_op)
            rows.append(
                {
                    "name": name,
                    "dtype": str(dtype).split(".")[-1],
                    "fused_ms": f_ms,
                    "torch_ms": t_ms,
                    "torch_ratio": t_ms / f_ms,
                    "achieved_gbs": moved / f_ms / 1e6,
                    "copy_gbs": copy_gbs,
                    "bandwidth_fraction": moved / f_ms / 1e6 / copy_gbs,
                    "max_rel_err": err,
                    "order": ops.chosen_order(xs, w.shape, size),
                }
            )
    return rows


def markdown(rows: list[Row], threads: int) -> str:
    lines = [
        f"CPU, {threads} threads, median ms (fused IQR); ratio = other / fused",
        "",
        "| shape | x -> y | order | fused ms | torch ms | ORT ms | torch/fused | ORT/fused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        y = (r.x_shape[0], r.c_out, *r.x_shape[2:-2], *r.size)
        lines.append(
            f"| {r.name} | {r.x_shape} -> {y} | {r.order} | {r.fused_ms:.3f} ({r.fused_iqr_ms:.3f}) | "
            f"{r.torch_ms:.3f} | {r.ort_ms:.3f} | {r.torch_ratio:.2f}x | {r.ort_ratio:.2f}x |"
        )
    t = statistics.median(r.torch_ratio for r in rows)
    o = statistics.median(r.ort_ratio for r in rows)
    lines += ["", f"median ratio over shapes: torch/fused {t:.2f}x, ORT/fused {o:.2f}x"]
    return "\n".join(lines)


def chart(rows: list[Row], threads: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    xs = np.arange(len(rows))
    for i, (key, label) in enumerate(
        [("fused_ms", "nvp fused"), ("torch_ms", "torch two-op"), ("ort_ms", "ORT two-op")]
    ):
        ax.bar(xs + (i - 1) * 0.27, [getattr(r, key) for r in rows], 0.27, label=label)
    ax.set_xticks(xs, [r.name for r in rows], rotation=15)
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"resize + 1x1 conv on CPU, {threads} threads")
    ax.legend()
    fig.tight_layout()
    return fig


def main() -> None:
    parser = make_parser(__doc__, threads=os.cpu_count())
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3, help="unrecorded calls at the start of each block")
    args = parser.parse_args()

    run = Run(args.out, "resize_conv", args.threads)
    rows = bench_cpu(args.threads, args.iters, args.warmup)
    report = {"threads": args.threads, "iters": args.iters, "cpu": [asdict(r) for r in rows]}
    print(markdown(rows, args.threads))
    if nvp_rt.cuda_is_available() and torch.cuda.is_available():
        report["cuda"] = bench_cuda(args.iters, args.warmup)
        print("\nCUDA, median ms; bandwidth = (x + y bytes) / time vs device copy bandwidth")
        print("| shape | dtype | order | fused ms | torch ms | torch/fused | GB/s | of copy BW | max rel err |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in report["cuda"]:
            print(
                f"| {r['name']} | {r['dtype']} | {r['order']} | {r['fused_ms']:.4f} | {r['torch_ms']:.4f} | "
                f"{r['torch_ratio']:.2f}x | {r['achieved_gbs']:.0f} | {100 * r['bandwidth_fraction']:.0f}% | "
                f"{r['max_rel_err']:.1e} |"
            )
    else:
        print("\nCUDA: skipped (no CUDA device or nvp built without CUDA)")
    run.write(report, markdown(rows, args.threads), chart(rows, args.threads))
    print(f"\nwrote {run.out}/resize_conv.{{json,md,png}}")


if __name__ == "__main__":
    main()
