"""The typed hook base: events to methods, the callable form wrapped, the end-ordering rule."""
import pytest

from framework.hooks import base


class _Recorder(base.Hook):
    def __init__(self, name, log, restores=False):
        self.name, self.log, self.restores_weights = name, log, restores

    def eval_end(self, ctx):
        self.log.append((self.name, "eval_end", ctx))

    def end(self, ctx):
        self.log.append((self.name, "end", ctx))


def test_events_call_their_methods_and_others_do_nothing():
    log = []
    h = _Recorder("a", log)
    for e in base.Event:
        h.dispatch(e, "ctx")
    h("eval_end", "ctx2")  # the callable form
    assert log == [("a", "eval_end", "ctx"), ("a", "end", "ctx"), ("a", "eval_end", "ctx2")]
    with pytest.raises(ValueError):
        h.dispatch("evl_end", None)


def test_a_plain_callable_is_wrapped_with_its_state():
    seen = []

    def fn(event, ctx):
        seen.append(event)
    fn.state = lambda: {"n": len(seen)}
    fn.load_state = lambda s: seen.extend(["loaded"] * s["n"])
    h = base.as_hook(fn)
    h.dispatch(base.Event.BEGIN, None)
    h.dispatch(base.Event.END, None)
    assert seen == ["begin", "end"] and h.state() == {"n": 2}
    h.load_state({"n": 1})
    assert seen[-1] == "loaded"
    with pytest.raises(ValueError, match="hooks\\[0\\]: expected a Hook or a callable.*got int"):
        base.as_hook(3, section="hooks[0]")


def test_weight_restoring_hooks_run_first_at_end_only():
    log = []
    a, b, c = _Recorder("a", log), _Recorder("b", log, restores=True), _Recorder("c", log)
    assert [h.name for h in base.ordered([a, b, c], base.Event.END)] == ["b", "a", "c"]
    assert [h.name for h in base.ordered([a, b, c], "eval_end")] == ["a", "b", "c"]


def test_missing_monitor_names_the_key_the_metrics_and_the_value():
    assert base.monitored({"loss": 0.5, "accuracy": 0.9}, "accuracy", section="hooks.early_stopping") == 0.9
    with pytest.raises(ValueError, match=r"hooks.early_stopping.monitor: expected one of the eval metrics "
                                         r"accuracy, loss; got 'auc'"):
        base.monitored({"loss": 0.5, "accuracy": 0.9}, "auc", section="hooks.early_stopping")
