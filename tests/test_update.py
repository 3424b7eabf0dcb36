"""framework.update: gated writes apply to the tracing thread's writes only."""
import threading

import keras
import tensorflow as tf

from framework import update


def test_a_gate_holds_for_its_own_thread_and_not_for_another():
    opt = keras.optimizers.SGD(0.1)
    mine, theirs = tf.Variable(1.0), tf.Variable(1.0)
    inside, done = threading.Event(), threading.Event()

    def other_thread():
        inside.wait()
        opt.assign_add(theirs, 1.0)  # meanwhile, eager code elsewhere: the class's own write
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with update.gated_writes(opt, tf.constant(False)):
        inside.set()
        done.wait()
        opt.assign_add(mine, 1.0)  # gated off: unchanged
        opt.assign(mine, 5.0)
    worker.join()
    assert float(mine.numpy()) == 1.0 and float(theirs.numpy()) == 2.0
    assert "assign" not in vars(opt) and "assign_add" not in vars(opt)  # the class's methods again
    opt.assign_sub(mine, 1.0)
    assert float(mine.numpy()) == 0.0


def test_nested_gates_restore_the_outer_one():
    opt = keras.optimizers.SGD(0.1)
    v = tf.Variable(0.0)
    with update.gated_writes(opt, tf.constant(True)):
        with update.gated_writes(opt, tf.constant(False)):
            opt.assign_add(v, 1.0)
        opt.assign_add(v, 10.0)
    assert float(v.numpy()) == 10.0
