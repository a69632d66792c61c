"""The classic pipeline's middle step, written as its users write it:
read every extracted JPEG, run the ONNX style model on it with onnxruntime,
write the stylized JPEG. (framewise's bench/compare.sh times it.)

usage: stylize.py MODEL IN_DIR OUT_DIR [--threads N] [--style K]
"""
import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("in_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--style", type=int, default=0)
    args = ap.parse_args()

    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    styles = sess.get_inputs()[1].shape[0]
    weights = np.zeros(styles, dtype=np.float32)
    weights[args.style] = 1.0

    os.makedirs(args.out_dir, exist_ok=True)
    names = sorted(f for f in os.listdir(args.in_dir) if f.endswith(".jpg"))
    t = time.time()
    for name in names:
        img = np.asarray(Image.open(os.path.join(args.in_dir, name)).convert("RGB"))
        h, w, _ = img.shape
        # The model wants sides that are multiples of 4: pad at the bottom/right, crop after.
        ph, pw = (-h) % 4, (-w) % 4
        x = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
        x = x.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        y = sess.run(["stylized"], {"image": x, "style_weights": weights})[0][0]
        y = (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)[:h, :w]
        Image.fromarray(y).save(os.path.join(args.out_dir, name), quality=95)
    dt = time.time() - t
    print(f"stylize.py: {len(names)} frames in {dt:.1f} s ({len(names) / dt:.2f} frames/s)", file=sys.stderr)


if __name__ == "__main__":
    main()
