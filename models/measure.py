"""Compare the fp32 and int8 models: speed, agreement, and top-5 on the test photos.

Prints, per model: mean (and median) ms per batch-1 inference with 1 and 2
intra-op threads (onnxruntime, 200 runs after 20 warm-up runs); top-1
agreement with fp32 and logit differences on scikit-image's photos (whole
photos, and 8 views of each, see photos.views); top-5 on the three held-out
test photos. Timings are only comparable on an otherwise idle machine.

Usage: python models/measure.py [--fp32 PATH] [--int8 PATH] [--labels PATH]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import photos

HERE = Path(__file__).resolve().parent
RUNS, WARMUP = 200, 20
TEST_PHOTOS = ["coffee.png", "chelsea.png", "motorcycle_left.png"]


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_ms(sess, x):
    for _ in range(WARMUP):
        sess.run(["logits"], {"input": x})
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        sess.run(["logits"], {"input": x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.mean(times)), float(np.median(times))


def logits(sess, batch):
    return np.concatenate([sess.run(["logits"], {"input": batch[i:i + 8]})[0] for i in range(0, len(batch), 8)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", type=Path, default=HERE / "efficientnet-lite0-fp32.onnx")
    ap.add_argument("--int8", type=Path, default=HERE / "efficientnet-lite0-int8.onnx")
    ap.add_argument("--labels", type=Path, default=HERE / "imagenet_classes.txt")
    args = ap.parse_args()
    labels = args.labels.read_text(encoding="utf-8").splitlines()

    names = photos.COLOUR_PHOTOS + photos.GREY_PHOTOS
    images = {n: photos.load(n) for n in names}
    whole = np.stack([photos.preprocess(images[n]) for n in names])
    views = np.stack([photos.preprocess(v) for n in names for v in photos.views(images[n])])
    colour = np.array([n in photos.COLOUR_PHOTOS for n in names])
    n_views = len(views) // len(names)
    print(f"onnxruntime {ort.__version__}, {len(names)} photos ({colour.sum()} colour), "
          f"{len(views)} views; {RUNS} timed runs, batch 1")

    ref = None
    for variant, path in (("fp32", args.fp32), ("int8", args.int8)):
        print(f"\n== {variant}: {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
        for threads in (1, 2):
            mean, median = latency_ms(session(path, threads), whole[:1])
            print(f"  {threads} thread{'s' if threads > 1 else ' '}: mean {mean:6.2f} ms  median {median:6.2f} ms")
        sess = session(path, 2)
        out = {"whole": logits(sess, whole), "views": logits(sess, views)}
        if ref is None:
            ref = out
        top1 = {k: out[k].argmax(1) == ref[k].argmax(1) for k in out}
        diff = np.abs(out["views"] - ref["views"])
        print(f"  top-1 agreement with fp32: colour photos {top1['whole'][colour].sum()}/{colour.sum()}, "
              f"all photos {top1['whole'].sum()}/{len(names)}, views {top1['views'].mean():.1%} "
              f"(colour {top1['views'][np.repeat(colour, n_views)].mean():.1%})")
        print(f"  |logit - fp32 logit| over the views: max {diff.max():.3f}, mean {diff.mean():.4f}")
        for name in TEST_PHOTOS:
            probs = photos.softmax(out["whole"][names.index(name)])
            top = np.argsort(-probs, kind="stable")[:5]
            print(f"  {name:20s} " + ", ".join(f"{c} {labels[c]} {probs[c]:.3f}" for c in top))


if __name__ == "__main__":
    main()
