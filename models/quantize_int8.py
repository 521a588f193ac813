"""Static int8 quantization of the fp32 EfficientNet-Lite0 model with onnxruntime.

QDQ format, symmetric per-channel int8 weights, uint8 activations, MinMax
calibration on scikit-image photos (held-out test photos excluded), with
deterministic crops and mirrors: 80 calibration tensors. Choices, measured with
onnxruntime 1.32 on an x86 CPU with AVX2 and no VNNI (see models/README.md):

- Weights of the convolutions that run as int8 GEMMs use 7 bits
  (reduce_range). With 8 bits the u8 x s8 kernels of such CPUs add pairs of
  products in int16 and saturate: top-1 agreement with fp32 fell to ~54 %.
  Depthwise convolutions run on a kernel that does not saturate: 8 bits.
- The stem convolution and block 0's depthwise convolution stay float: that
  depthwise convolution is by far the most sensitive layer to weight
  quantization. The float part must be a prefix of the graph: onnxruntime's
  WeightBiasQuantization graph transformer re-quantizes (per tensor!) the
  float weights of any Conv found between DequantizeLinear and QuantizeLinear,
  which is worse than not excluding it at all.
- Percentile and Entropy calibration, and int8 activations, were no better.

Same inputs give byte-identical output.

Usage: python models/quantize_int8.py --fp32 models/efficientnet-lite0-fp32.onnx \
           --out models/efficientnet-lite0-int8.onnx
"""

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

import photos

FLOAT_NODES = ["_conv_stem", "_blocks.0._depthwise_conv"]  # a prefix of the graph, see above
GREY_VIEWS = 4  # views per grey photo; colour photos get all of photos.views()
MIN_ESPRESSO = 0.5


def calibration_tensors():
    """80 preprocessed [1,3,224,224] tensors from photos not used for testing."""
    tensors = []
    for names, n_views in ((photos.COLOUR_PHOTOS, None), (photos.GREY_PHOTOS, GREY_VIEWS)):
        for name in names:
            if name not in photos.HELD_OUT:
                tensors += [photos.preprocess(v)[None] for v in photos.views(photos.load(name))[:n_views]]
    return tensors


class _Reader(CalibrationDataReader):
    def __init__(self, tensors):
        self._it = iter(tensors)

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {"input": x}


def quantize(fp32_path, out_path):
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX shape inference only: the exported graph is already optimized.
        quant_pre_process(str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        depthwise_weights = [
            n.input[1] for n in model.graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
        ]
        quantize_static(
            str(prepared), str(out_path), _Reader(calibration_tensors()),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=FLOAT_NODES,
            extra_options={
                "TensorQuantOverrides": {w: [{"axis": 0, "reduce_range": False}] for w in depthwise_weights},
            },
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", required=True, type=Path, help="fp32 model from export_onnx.py")
    ap.add_argument("--out", required=True, type=Path, help="output .onnx path")
    args = ap.parse_args()
    quantize(args.fp32, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); top-5 on the test photos:")
    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    failures = photos.check_expected(session, MIN_ESPRESSO)
    if failures:
        sys.exit("int8 model fails its checks: " + "; ".join(failures))


if __name__ == "__main__":
    main()
