"""Test seam for a CLI run (`--import=tests.reliability._slow_save`): every checkpoint save
pauses 2 s after its files are written and before the `checkpoint` index names it, so that a
test can kill the process in the middle of a save."""
import time

import tensorflow as tf
from absl import logging

PAUSE_S = 2.0
_save = tf.train.CheckpointManager.save


def _slow_save(self, checkpoint_number=None, check_interval=True, options=None):
    def pause(save_path):
        logging.warning("slow save: %s written; pausing %.1fs before the index names it", save_path, PAUSE_S)
        time.sleep(PAUSE_S)

    options = tf.train.CheckpointOptions(experimental_write_callbacks=[pause])
    return _save(self, checkpoint_number=checkpoint_number, check_interval=check_interval, options=options)


tf.train.CheckpointManager.save = _slow_save
