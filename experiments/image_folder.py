"""Images on disk: PNG/JPEG files in class subfolders (written from digits, upscaled), and TFRecord.

image_folder: writes digits as 16x16 PNG (even index) and JPEG (odd index) files under
    `data_dir/{train,eval}/<class>/`, then reads them back: decode, resize to 16x16, convert to
    float32, and augment inside tf.data with a random flip and a random rotation (stateless,
    seeded by epoch and position, so a resumed run sees the same augmentations).
    Run: python -m framework.main --experiment=image_folder --model_dir=runs/images
    Expected: eval accuracy >= 0.9 (measured 0.9933).
image_folder_tfrecord: the same images through a TFRecord file.
    Run: python -m framework.main --experiment=image_folder_tfrecord --model_dir=runs/images_tfr
    Expected: eval accuracy >= 0.9 (measured 0.9911).
(`task.train_data.data_dir` / `task.eval_data.data_dir` choose where the files are written.)
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from framework import atomic, registry
from framework.data import bundled, files


def write_digit_images(data_dir: str, size: int = 16) -> str:
    """Writes the digits splits as PNG/JPEG files (once); returns data_dir."""
    marker = os.path.join(data_dir, ".complete")
    if os.path.exists(marker):
        return data_dir
    for split in ("train", "eval"):
        x, y = bundled.load_arrays("digits", split)
        imgs = tf.image.resize(x.reshape(-1, 8, 8, 1), [size, size]).numpy()
        for i, (img, label) in enumerate(zip(imgs, y)):
            d = os.path.join(data_dir, split, str(int(label)))
            os.makedirs(d, exist_ok=True)
            u8 = tf.convert_to_tensor(np.clip(img * 255, 0, 255).astype(np.uint8))
            if i % 2 == 0:
                data, ext = tf.io.encode_png(u8), "png"
            else:
                data, ext = tf.io.encode_jpeg(u8, quality=95), "jpg"
            tf.io.write_file(os.path.join(d, f"{i:05d}.{ext}"), data)
    atomic.write_text(marker, "")
    return data_dir


def write_digit_tfrecords(data_dir: str, size: int = 16) -> dict[str, str]:
    os.makedirs(data_dir, exist_ok=True)
    out = {}
    for split in ("train", "eval"):
        path = os.path.join(data_dir, f"digits_{split}.tfrecord")
        if not os.path.exists(path):
            x, y = bundled.load_arrays("digits", split)
            imgs = tf.image.resize(x.reshape(-1, 8, 8, 1), [size, size]).numpy()
            with atomic.replacing(path) as tmp:
                files.write_tfrecord(tmp, imgs, y.astype(np.int64))
        out[split] = path
    return out


def flip_and_rotate(elem, seed, max_degrees: float = 12.0):
    """Random horizontal flip and rotation of one (image, label, weight), stateless in `seed`."""
    x, y, w = elem
    x = tf.image.stateless_random_flip_left_right(x, seed=seed)
    angle = tf.random.stateless_uniform([], seed=seed + 1, minval=-1.0, maxval=1.0) * max_degrees * math.pi / 180
    x = keras.ops.image.affine_transform(
        x[None], tf.stack([[tf.cos(angle), -tf.sin(angle), 0.0, tf.sin(angle), tf.cos(angle), 0.0, 0.0, 0.0]]),
        fill_mode="constant")[0]
    return x, y, w


@registry.register_dataset("digit_images")
def digit_images(split: str, data_dir: str = "runs/data/digit_images", augment: bool = True):
    write_digit_images(data_dir)
    ds = files.image_folder(split, directory=os.path.join(data_dir, "train"),
                            eval_directory=os.path.join(data_dir, "eval"), image_size=(16, 16), channels=1)
    return (ds, flip_and_rotate) if (augment and split == "train") else ds


@registry.register_dataset("digit_tfrecords")
def digit_tfrecords(split: str, data_dir: str = "runs/data/digit_tfrecords"):
    paths = write_digit_tfrecords(data_dir)
    ds = files.tfrecord(split, files=paths["train"], eval_files=paths["eval"],
                        features={"x": {"shape": [16, 16, 1], "dtype": "float32"},
                                  "y": {"shape": [], "dtype": "int64"}})
    return (ds, flip_and_rotate) if split == "train" else ds


@registry.register_model("image_cnn")
def image_cnn(size: int = 16, channels: int = 1, width: int = 32) -> keras.Model:
    inputs = keras.Input((size, size, channels), name="image")
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(width * (i + 1), 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU()(x)
        if i < 2:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="image_cnn")


def _exp(dataset: str) -> dict:
    return {"task": {"model": {"name": "image_cnn"},
                     "train_data": {"name": dataset, "batch_size": 64},
                     "eval_data": {"name": dataset, "batch_size": 150}, "metrics": ["accuracy"]},
            "trainer": {"train_steps": 2000, "steps_per_loop": 100, "eval_interval": 500, "checkpoint_interval": 1000},
            "optimizer": {"name": "adam", "learning_rate": 3e-3, "schedule": {"name": "cosine"}}}


@registry.register_experiment("image_folder")
def image_folder_experiment() -> dict:
    return _exp("digit_images")


@registry.register_experiment("image_folder_tfrecord")
def image_folder_tfrecord() -> dict:
    return _exp("digit_tfrecords")
