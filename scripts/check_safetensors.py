#!/usr/bin/env python3
"""Checks a Cohort checkpoint outside Rust: loads a 2NN (`mlp`) safetensors file with the Python
`safetensors` package into numpy arrays, runs the forward pass in numpy on the MNIST test images
and prints how many it classifies correctly.

    scripts/check_safetensors.py CHECKPOINT MNIST_DIR

MNIST_DIR holds `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (raw or `.gz`), as
`cohort run --dataset mnist` reads them. Prints one line, `correct C of N accuracy A`.

The forward pass is the node's: pixels / 255 as float32, then
relu(x W1^T + b1) -> relu(. W2^T + b2) -> . W3^T + b3, argmax over the 10 logits. The tensor
names are the safetensors keys the node writes (`fc1.weight` of shape [200, 784], ...).
`model/tests/safetensors_numpy.rs` runs this on a freshly trained model and compares the count
with the Rust evaluation.
"""

import gzip
import os
import struct
import sys

import numpy as np
from safetensors.numpy import load_file


def read_idx(directory, name):
    """The array in IDX file `name` (or `name.gz`) of `directory`."""
    path = os.path.join(directory, name)
    if os.path.exists(path):
        data = open(path, "rb").read()
    elif os.path.exists(path + ".gz"):
        data = gzip.open(path + ".gz", "rb").read()
    else:
        sys.exit(f"{path}(.gz) not found")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        sys.exit(f"{path}: not an IDX file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        sys.exit(f"{path}: {body.size} bytes of data for dimensions {dims}")
    return body.reshape(dims)


def forward(params, x):
    """The 2NN's logits for the rows of `x` (float32)."""
    h = x
    for layer in ("fc1", "fc2"):
        h = np.maximum(h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"], 0)
    return h @ params["fc3.weight"].T + params["fc3.bias"]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    checkpoint, mnist = sys.argv[1], sys.argv[2]
    params = load_file(checkpoint)
    want = {
        "fc1.weight": (200, 784),
        "fc1.bias": (200,),
        "fc2.weight": (200, 200),
        "fc2.bias": (200,),
        "fc3.weight": (10, 200),
        "fc3.bias": (10,),
    }
    got = {name: tuple(t.shape) for name, t in params.items()}
    if got != want:
        sys.exit(f"{checkpoint}: tensors {got}, expected the 2NN's {want}")
    if any(t.dtype != np.float32 for t in params.values()):
        sys.exit(f"{checkpoint}: expected float32 tensors")
    images = read_idx(mnist, "t10k-images-idx3-ubyte")
    labels = read_idx(mnist, "t10k-labels-idx1-ubyte")
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    predicted = forward(params, x).argmax(axis=1)
    correct = int((predicted == labels).sum())
    print(f"correct {correct} of {len(labels)} accuracy {correct / len(labels):.6f}")


if __name__ == "__main__":
    main()
