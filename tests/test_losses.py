"""`losses.label_kind`: the labels a built loss reads, decided by its type (not by its name)."""
import keras
import pytest

from framework import config as config_lib
from framework import losses as losses_lib


@pytest.mark.parametrize("loss, kind", [
    (losses_lib.sparse_categorical_crossentropy(), "sparse"),
    (losses_lib.categorical_crossentropy(), "categorical"),
    (losses_lib.binary_crossentropy(), "binary"),
    (losses_lib.binary_crossentropy(pos_weight=[1.0, 2.0]), "binary"),
    (losses_lib.mse(), "regression"),
    (losses_lib.huber(), "regression"),
    (keras.losses.Hinge(), "hinge"),
    (keras.losses.CategoricalHinge(), "categorical"),
    (keras.losses.BinaryFocalCrossentropy(), "binary"),
    (keras.losses.sparse_categorical_crossentropy, "sparse"),
])
def test_kind_from_the_loss_type_whatever_its_registered_name(loss, kind):
    assert losses_lib.label_kind(loss, name="my_loss") == kind


def test_plain_function_falls_back_to_the_name_table():
    def fn(y, p):
        return (y - p) ** 2

    assert losses_lib.label_kind(fn, name="sparse_categorical_crossentropy") == "sparse"
    assert losses_lib.label_kind(fn, name="my_sparse_crossentropy") == "regression"  # no substring test
    losses_lib.set_label_kind("my_sparse_crossentropy", "sparse")
    try:
        assert losses_lib.label_kind(fn, name="my_sparse_crossentropy") == "sparse"
    finally:
        losses_lib._KIND_BY_NAME.pop("my_sparse_crossentropy")  # noqa: SLF001 - the test's own entry
    with pytest.raises(ValueError, match="expected one of"):
        losses_lib.set_label_kind("x", "ordinal")


def test_section_kind_builds_the_loss_and_a_mapping_is_regression():
    cfg = config_lib.from_dict({"task": {"loss": {"name": "binary_crossentropy", "pos_weight": [1.0]}}})
    assert losses_lib.section_label_kind(cfg.task.loss) == "binary"
    assert losses_lib.section_label_kind({"a": cfg.task.loss}) == "regression"
