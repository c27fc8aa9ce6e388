#!/usr/bin/python3
"""The Python baseline for fer-pack's benchmark: the same work with PIL + h5py.

Walks an ImageFolder (split folders train/val/test with class folders), decodes every image with
PIL, converts to grayscale and resizes to SIZE, writes one HDF5 shard per split with the same
layout as fer-pack (/images uint8 [N,H,W,1] chunked by 256 images, /labels, /ids), computes the
train mean/std and writes a manifest. Decoding runs in WORKERS processes (multiprocessing), like
fer-pack's --threads.

  /usr/bin/python3 pack_reference.py SRC OUT [--size 48] [--workers 2]
"""
import argparse
import hashlib
import json
import multiprocessing as mp
import os

import h5py
import numpy as np
from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def decode(args):
    path, size = args
    try:
        with Image.open(path) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BOX)
            return np.asarray(im, dtype=np.uint8)
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    classes = sorted(d for d in os.listdir(os.path.join(a.src, "train")) if not d.startswith("."))
    manifest = {"classes": classes, "splits": {}}
    pool = mp.Pool(a.workers) if a.workers > 1 else None
    for split in ("train", "val", "test"):
        root = os.path.join(a.src, split)
        if not os.path.isdir(root):
            continue
        items = []
        for label, cls in enumerate(classes):
            for dirpath, _, files in os.walk(os.path.join(root, cls)):
                for f in sorted(files):
                    if os.path.splitext(f)[1].lower() in EXTS and not f.startswith("."):
                        items.append((os.path.join(dirpath, f), label))
        jobs = [(p, a.size) for p, _ in items]
        images = pool.map(decode, jobs, chunksize=64) if pool else list(map(decode, jobs))
        keep = [i for i, im in enumerate(images) if im is not None]
        arr = np.stack([images[i] for i in keep])[..., None]
        labels = np.array([items[i][1] for i in keep], dtype=np.uint8)
        ids = [os.path.relpath(items[i][0], root) for i in keep]
        path = os.path.join(a.out, f"{split}-00000-of-00001.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=arr, chunks=(min(256, len(arr)), a.size, a.size, 1),
                             maxshape=(None, a.size, a.size, 1))
            f.create_dataset("labels", data=labels)
            f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
            f.attrs["format"] = "fer-shards"
            f.attrs["version"] = 1
            f.attrs["split"] = split
        with open(path, "rb") as fh:
            checksum = hashlib.sha256(fh.read()).hexdigest()
        manifest["splits"][split] = {"count": len(arr), "checksum": checksum}
        if split == "train":
            x = arr.astype(np.float64) / 255.0
            manifest["normalization"] = {"mean": [x.mean()], "std": [x.std(ddof=1)]}
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    if pool:
        pool.close()


if __name__ == "__main__":
    main()
