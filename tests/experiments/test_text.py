"""The text experiments' data: real stdlib docstrings, disjoint splits, next-byte targets, AST tags."""
import ast

import numpy as np
import pytest

from experiments import text as T


def test_family_splits_are_disjoint_and_every_class_is_present():
    train = T.docstring_family("train")
    held = T.docstring_family("eval")
    tr = {bytes(x.numpy().astype(np.uint8) - 1) for x, _ in train}
    ev = [(bytes(x.numpy().astype(np.uint8) - 1), int(y)) for x, y in held]
    assert not tr & {x for x, _ in ev}
    assert sorted({y for _, y in ev}) == list(range(len(T.FAMILIES)))
    assert train.element_spec[0].shape.as_list() == [None]  # variable length: padded by the pipeline


def test_byte_lm_targets_are_the_next_bytes_of_held_out_files():
    for x, y in T.docstring_bytes("eval").take(20):
        x, y = x.numpy(), y.numpy()
        assert len(x) == len(y) <= 128 and np.array_equal(x[1:], y[:-1])
        assert x.min() >= 1  # 0 is padding


def test_tags_come_from_the_function_body():
    fn = ast.parse("def f(a):\n    '''Doc.'''\n    try:\n        for i in a:\n            pass\n"
                   "    except E:\n        raise\n    def g():\n        return 1\n").body[0]
    assert dict(zip(T.TAGS, T._function_tags(fn))) == {"raises": 1, "returns": 0, "loops": 1, "handles": 1}


@pytest.mark.slow
def test_stated_pos_weight_is_negatives_over_positives():
    # Parses 15 stdlib packages (~30 s).
    assert T.positive_weights() == [4.4, 0.7, 5.1, 6.3]
