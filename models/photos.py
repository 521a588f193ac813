"""Photos bundled with scikit-image, the model's preprocessing, and the prediction checks.

Shared by export_onnx.py, quantize_int8.py and measure.py (run as scripts from
any directory; Python puts models/ on sys.path).
"""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
SIZE = 224
# Real photographs among scikit-image's data files (the rest are drawings,
# charts, a phantom or a logo).
COLOUR_PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
]
GREY_PHOTOS = [
    "brick.png", "camera.png", "cell.png", "clock_motion.png", "coins.png",
    "grass.png", "gravel.png", "moon.png", "page.png", "text.png",
]
# photo -> (acceptable ImageNet classes, must be within the top k).
EXPECTED = {
    "coffee.png": ((967,), 1),  # espresso
    "chelsea.png": (range(281, 286), 1),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "motorcycle_left.png": ((665, 670), 2),  # moped, motor scooter
    "camera.png": ((872,), 1),  # tripod
}
# Held out from int8 calibration. motorcycle_right.png is the other half of
# the stereo pair that motorcycle_left.png belongs to, so it is held out too.
HELD_OUT = {"coffee.png", "chelsea.png", "motorcycle_left.png", "motorcycle_right.png"}
ESPRESSO = 967


def load(name):
    """A bundled image as an RGB PIL image (grey is replicated, alpha dropped)."""
    with Image.open(SKIMAGE_DATA / name) as img:
        return img.convert("RGB")


def preprocess(img):
    """PIL image -> float32 [3, 224, 224]: whole image resized (bilinear), (x - 127) / 128."""
    x = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.float32)
    return ((x - 127.0) / 128.0).transpose(2, 0, 1).copy()


def views(img):
    """Deterministic augmentations: the image, its mirror, and 80 % crops (centre, corners)."""
    w, h = img.size
    cw, ch = int(w * 0.8), int(h * 0.8)
    boxes = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    crops = [img.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    return [img, ImageOps.mirror(img)] + crops + [ImageOps.mirror(crops[0])]


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def check_expected(session, min_espresso):
    """Run EXPECTED through an onnxruntime session; print top-5s, return a list of failures."""
    failures = []
    for name, (classes, k) in EXPECTED.items():
        probs = softmax(session.run(["logits"], {"input": preprocess(load(name))[None]})[0][0])
        top = np.argsort(-probs, kind="stable")[:5]
        print(f"  {name:20s} " + "  ".join(f"{c}:{probs[c]:.3f}" for c in top))
        if not set(top[:k].tolist()) & set(classes):
            failures.append(f"{name}: none of {list(classes)} in top-{k}")
        if name == "coffee.png" and probs[ESPRESSO] < min_espresso:
            failures.append(f"coffee.png: espresso {probs[ESPRESSO]:.3f} < {min_espresso}")
    return failures
