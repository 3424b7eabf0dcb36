"""Registered components for sequence, multi-output and multi-label tests (toy data, small models)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from framework import config as config_lib
from framework import registry

VOCAB = 12


def sequences(n: int, *, seed: int = 0, min_len: int = 1, max_len: int = 20) -> list[np.ndarray]:
    """n token sequences of ids 1..VOCAB-1 (0 is padding) of random lengths."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, size=int(rng.integers(min_len, max_len + 1))).astype(np.int32)
            for _ in range(n)]


def seq_label(s: np.ndarray) -> int:
    return int((s > VOCAB // 2).sum() > len(s) / 2)


def tag_labels(s: np.ndarray) -> np.ndarray:
    return (s % 3).astype(np.int32)


if "seq_tokens" not in registry.DATASETS:
    @registry.register_dataset("seq_tokens")
    def seq_tokens(split: str, n: int = 40, seed: int = 0, max_len: int = 20, min_len: int = 1,
                   kind: str = "class") -> tf.data.Dataset:
        """Variable-length int32 sequences from a generator (unknown length in the spec).

        kind: class (a sparse label per sequence), tags (a label per token), dict (labels
        {"cls": class, "reg": mean token / VOCAB}), onehot (float features [T, VOCAB], a class).
        """
        seqs = sequences(n, seed=seed + (1000 if split == "eval" else 0), min_len=min_len, max_len=max_len)

        def gen():
            for s in seqs:
                if kind == "tags":
                    yield s, tag_labels(s)
                elif kind == "dict":
                    yield s, {"cls": np.int32(seq_label(s)), "reg": np.float32(s.mean() / VOCAB)}
                elif kind == "onehot":
                    yield np.eye(VOCAB, dtype=np.float32)[s], np.int32(seq_label(s))
                else:
                    yield s, np.int32(seq_label(s))

        x = tf.TensorSpec([None, VOCAB], tf.float32) if kind == "onehot" else tf.TensorSpec([None], tf.int32)
        if kind == "tags":
            y = tf.TensorSpec([None], tf.int32)
        elif kind == "dict":
            y = {"cls": tf.TensorSpec([], tf.int32), "reg": tf.TensorSpec([], tf.float32)}
        else:
            y = tf.TensorSpec([], tf.int32)
        return tf.data.Dataset.from_generator(gen, output_signature=(x, y))

    @registry.register_model("seq_lstm")
    def seq_lstm(units: int = 8, classes: int = 2) -> keras.Model:
        """Embedding(mask_zero) + LSTM + Dense: the issue's failing model."""
        x = keras.Input((None,), dtype="int32", name="tokens")
        h = keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="emb")(x)
        h = keras.layers.LSTM(units, name="lstm")(h)
        return keras.Model(x, keras.layers.Dense(classes, name="out")(h), name="seq_lstm")

    @registry.register_model("seq_masking")
    def seq_masking(units: int = 8, classes: int = 2) -> keras.Model:
        """Masking(0.0) + LSTM + Dense over float feature sequences."""
        x = keras.Input((None, VOCAB), name="features")
        h = keras.layers.Masking(0.0, name="mask")(x)
        h = keras.layers.LSTM(units, name="lstm")(h)
        return keras.Model(x, keras.layers.Dense(classes, name="out")(h), name="seq_masking")

    @registry.register_model("seq_tagger")
    def seq_tagger(classes: int = 3, mask_zero: bool = False) -> keras.Model:
        """A per-token classifier: Embedding + Dense on each position."""
        x = keras.Input((None,), dtype="int32", name="tokens")
        h = keras.layers.Embedding(VOCAB, 8, mask_zero=mask_zero, name="emb")(x)
        h = keras.layers.Dense(8, activation="tanh", name="hidden")(h)
        return keras.Model(x, keras.layers.Dense(classes, name="out")(h), name="seq_tagger")

    @registry.register_model("two_head")
    def two_head(classes: int = 2) -> keras.Model:
        """Pooled embeddings into a classification head `cls` and a regression head `reg`."""
        x = keras.Input((None,), dtype="int32", name="tokens")
        h = keras.layers.Embedding(VOCAB, 8, mask_zero=True, name="emb")(x)
        h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
        h = keras.layers.Dense(8, activation="tanh", name="hidden")(h)
        return keras.Model(x, {"cls": keras.layers.Dense(classes, name="cls")(h),
                               "reg": keras.layers.Dense(1, name="reg")(h)}, name="two_head")


def seq_config(**sections) -> config_lib.ExperimentConfig:
    """A small config on `seq_tokens` with `sections` merged on top."""
    base = {
        "task": {"model": {"name": "seq_lstm"},
                 "train_data": {"name": "seq_tokens", "batch_size": 8, "shuffle_buffer": 100},
                 "eval_data": {"name": "seq_tokens", "batch_size": 8},
                 "loss": {"name": "sparse_categorical_crossentropy"}, "metrics": ["accuracy"]},
        "trainer": {"train_steps": 6, "steps_per_loop": 3, "eval_interval": 6, "checkpoint_interval": 6,
                    "jit_compile": False},
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
    }
    return config_lib.validate(config_lib.merge(config_lib.from_dict(base), sections))
