"""Token-level losses: the mean over the real tokens of the global batch (replicas, micro-batches)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from framework import controller as controller_lib
from framework import trainer as trainer_lib
from tests import _seq_components as S


def _mirrored():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (tests/conftest.py)")
    return tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])


def _cfg(jit=False, accumulation=1, mask_zero=False, steps=1, lr=0.5):
    return S.seq_config(task={"model": {"name": "seq_tagger", "mask_zero": mask_zero},
                              "train_data": {"kind": "tags", "shuffle_buffer": 0, "n": 32, "max_len": 12},
                              "eval_data": {"kind": "tags", "n": 11}, "metrics": ["accuracy"]},
                        trainer={"train_steps": steps, "steps_per_loop": steps, "eval_interval": steps,
                                 "jit_compile": jit},
                        optimizer={"name": "sgd", "learning_rate": lr, "accumulation_steps": accumulation})


def _masked_mean(model, batches):
    """Hand computation: cross-entropy of every real token of all batches / their number."""
    total, count = 0.0, 0.0
    for x, y, w in batches:
        logits = model(x, training=False).numpy().astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, y.numpy()[..., None].astype(np.int64), -1)[..., 0]
        real = w.numpy() > 0
        total += float(ce[real].sum())
        count += float(real.sum())
    return total / count


@pytest.mark.parametrize("jit,accumulation,mask_zero", [(False, 1, False), ("auto", 1, True), (False, 2, False)])
def test_loss_and_update_are_the_global_masked_mean(jit, accumulation, mask_zero):
    t = trainer_lib.build(_cfg(jit, accumulation, mask_zero), tf.distribute.get_strategy())
    init = t.model.get_weights()
    it = iter(t.train_dataset(start_step=0))
    batches = [next(it) for _ in range(accumulation)]
    expected = _masked_mean(t.model, batches)
    # The reference update: SGD on the gradient of that masked mean over all micro-batches.
    ref = S.seq_tagger(mask_zero=mask_zero)
    ref.set_weights(init)
    with tf.GradientTape() as tape:
        tot, cnt = 0.0, 0.0
        for x, y, w in batches:
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=ref(x, training=True))
            tot += tf.reduce_sum(ce * w)
            cnt += tf.reduce_sum(w)
        ref_loss = tot / cnt
    grads = tape.gradient(ref_loss, ref.trainable_variables)
    keras.optimizers.SGD(0.5).apply_gradients(zip(grads, ref.trainable_variables))
    result = t.steps.train_loop(iter(t.train_dataset(start_step=0)), 1, list(range(len(t.groups.variables))))
    assert result.loss == pytest.approx(expected, rel=1e-5)
    if accumulation > 1:
        # Micro-batches with different token counts: the mean of their means is another number.
        assert len({float(b[2].numpy().sum()) for b in batches}) == accumulation
        init_model = S.seq_tagger(mask_zero=mask_zero)
        init_model.set_weights(init)
        assert abs(np.mean([_masked_mean(init_model, [b]) for b in batches]) - expected) > 1e-4
    for a, b in zip(t.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_one_vs_two_replicas_equal(tmp_path):
    # Replicas see halves with different token counts: per-replica means would differ from
    # the global token mean; the framework normalises by the all-reduced count.
    one = trainer_lib.build(_cfg(steps=4, lr=0.3), tf.distribute.get_strategy())
    c1 = controller_lib.Controller(trainer=one, model_dir=str(tmp_path / "one"))
    c1.train(evaluate=True)
    two = trainer_lib.build(_cfg(steps=4, lr=0.3), _mirrored())
    c2 = controller_lib.Controller(trainer=two, model_dir=str(tmp_path / "two"))
    c2.train(evaluate=True)
    for a, b in zip(one.model.get_weights(), two.model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert c2.last_result.loss == pytest.approx(c1.last_result.loss, rel=1e-5)
    for k, v in c1.last_eval.items():
        assert c2.last_eval[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # The eval loss and token accuracy against a hand computation over the real eval tokens.
    from framework.data import pipeline

    batches = list(pipeline.eval_batches(one.eval_source, global_batch=8, cache=False)[0])
    assert c1.last_eval["loss"] == pytest.approx(_masked_mean(one.model, batches), rel=1e-5)
    correct, count = 0.0, 0.0
    for x, y, w in batches:
        pred = np.argmax(one.model(x).numpy(), -1)
        correct += float(((pred == y.numpy()) * w.numpy()).sum())
        count += float(w.numpy().sum())
    assert c1.last_eval["accuracy"] == pytest.approx(correct / count, abs=1e-6)
