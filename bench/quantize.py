"""Does int8 pay on this CPU? (issue 7, deliverable 3)

Quantises the style model's convolutions with ONNX Runtime's own tools, static (QDQ,
per-channel weights, activations calibrated on real frames: uint8 or int8) and dynamic,
then times each against fp32 with the same threads and reports the PSNR of its output
against fp32 on frames not used for calibration. Prints which ops ONNX Runtime actually
ran (a QDQ pair it cannot fuse into QLinearConv stays a float Conv with extra work).

usage: python quantize.py MODEL FRAMES.rgb WIDTH HEIGHT THREADS WORKDIR
"""
import collections
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

ort.set_default_logger_severity(3)  # not the warning about saving the optimised graph
model, frames_path, w, h, threads, work = sys.argv[1:7]
w, h, threads = int(w), int(h), int(threads)
frames = np.fromfile(frames_path, np.uint8).reshape(-1, h, w, 3)
xs = [f.transpose(2, 0, 1)[None].astype(np.float32) / 255 for f in frames]
calib, held_out = xs[0::2], xs[1::2]
style = np.zeros(26, np.float32)
style[0] = 1


class Frames(CalibrationDataReader):
    def __init__(self, xs):
        self.it = iter([{"image": x, "style_weights": style} for x in xs])

    def get_next(self):
        return next(self.it, None)


def session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.optimized_model_filepath = os.path.join(work, "ran-" + os.path.basename(path))
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def run(s, x):
    return s.run(None, {"image": x, "style_weights": style})[0]


def to_u8(a):
    return np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8).astype(np.float64)


def psnr(a, b):
    mse = ((to_u8(a) - to_u8(b)) ** 2).mean()
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def ms_per_frame(s):
    run(s, held_out[0])
    times = []
    for x in held_out:
        t0 = time.perf_counter()
        run(s, x)
        times.append(time.perf_counter() - t0)
    return np.median(times) * 1000


def ran_ops(path):
    m = onnx.load(os.path.join(work, "ran-" + os.path.basename(path)))
    c = collections.Counter(n.op_type for n in m.graph.node)
    return ", ".join(f"{k} {c[k]}" for k in ("Conv", "QLinearConv", "ConvInteger", "QuantizeLinear",
                                             "DequantizeLinear", "DynamicQuantizeLinear") if c[k])


pre = os.path.join(work, "pre.onnx")
quant_pre_process(model, pre)
variants = []
for name, act in (("static-u8s8", QuantType.QUInt8), ("static-s8s8", QuantType.QInt8)):
    out = os.path.join(work, name + ".onnx")
    quantize_static(pre, out, Frames(calib), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    variants.append((name, out))
out = os.path.join(work, "dynamic-u8.onnx")
quantize_dynamic(pre, out, op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
variants.append(("dynamic-u8", out))

fp32 = session(model)
ref = [run(fp32, x) for x in held_out]
print(f"{len(calib)} calibration frames, {len(held_out)} held-out frames of {w}x{h}, {threads} threads")
print(f"fp32: {ms_per_frame(fp32):.1f} ms/frame")
for name, path in variants:
    s = session(path)
    outs = [run(s, x) for x in held_out]
    worst = min(psnr(a, b) for a, b in zip(outs, ref))
    print(f"{name}: {ms_per_frame(s):.1f} ms/frame, worst PSNR vs fp32 {worst:.1f} dB; ran: {ran_ops(path)}")
print(f"fp32 again: {ms_per_frame(fp32):.1f} ms/frame")
