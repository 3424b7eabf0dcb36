"""The compiled train and eval loops: K steps (or N eval batches) per call, results at the end.

A train loop resets its meters, runs up to `num_steps` optimizer steps while the non-finite
policy has not halted, and returns one structure of tensors: steps done, the global step, the
meters' results, the learning rates of the last step and the policy's status
(`results.LoopResult` says what each holds). An eval loop likewise returns its meters' results.
Nothing is read from the host inside a loop; the caller fetches the returned structure once.

Under whole-step XLA (`jit.JitPlan.whole_step`) each step, or each group of
`JitPlan.group_steps` steps, is one XLA call.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Callable, Iterator

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

from framework.jit import JitPlan
from framework.nonfinite import NonFinitePolicy
from framework.results import EvalMeters, TrainMeters
from framework.update import Update


def build_train_loop(*, strategy: tf.distribute.Strategy, replica_step: Callable, global_step: tf.Variable,
                     policy: NonFinitePolicy, meters: TrainMeters, update: Update, plan: JitPlan,
                     micro_batches: int, traces: collections.Counter) -> Callable:
    """The compiled `loop(iterator, num_steps) -> dict of tensors` of one frozen set.

    Args:
      strategy: the run's strategy.
      replica_step: `(batches, step) -> None`, run per replica by `strategy.run`: one optimizer
        step over `micro_batches` batches (the update happens inside it, in a merge_call).
      global_step: advanced once per step that ran (not after a halt).
      policy: its `halt` ends the loop.
      meters: reset at the start, read at the end.
      update: its `last_lr` is reported.
      plan: the XLA plan (whole step, steps per XLA call).
      micro_batches: batches per step (gradient accumulation).
      traces: counts the traces (`traces["train"]`).
    """
    # The step body is not converted by AutoGraph (as in Keras's own train step): it needs
    # no Python control flow on tensors, and converting the model, optimizer and metrics
    # code recursively made the first trace ~5x slower (measured: 2.1 s vs 0.4 s, MLP).
    @tf.autograph.experimental.do_not_convert
    def one_step(batches):
        step = global_step.read_value()
        strategy.run(replica_step, args=(batches, step))
        global_step.assign_add(tf.where(policy.halt, tf.constant(0, tf.int64), tf.constant(1, tf.int64)))

    @tf.autograph.experimental.do_not_convert  # no control flow on tensors (see one_step)
    def begin():
        traces["train"] += 1
        meters.reset()
        policy.begin_loop()

    @tf.autograph.experimental.do_not_convert
    def end(i):
        return {"steps_done": i, "step": global_step.read_value(), **meters.results(),
                "learning_rates": update.last_lr.read_value(), **policy.status()}

    def step_loop(run_step):
        """A loop that calls `run_step(batches)` once per step."""
        @tf.function(autograph=False)  # an explicit while loop (see _while)
        def loop(iterator, num_steps):
            begin()

            def body(i):
                run_step([next(iterator) for _ in range(micro_batches)])
                return i + 1

            return end(_while(policy, num_steps, body))

        return loop

    if not plan.whole_step:
        return step_loop(one_step)
    if plan.group_steps == 1:
        # Under XLA with one step per call there is no XLA loop (an XLA loop around a conv
        # layer ran ~50x slower on CPU: docs/design.md#t5): each step is one XLA call.
        if not plan.compile_ahead:
            return _without_grappler(step_loop(tf.function(one_step, jit_compile=True, autograph=False)))
        run_step, compile_xla = _single_xla_step(one_step)
        xla_loop = step_loop(run_step)
    else:
        xla_loop, compile_xla = _grouped_loop(one_step, begin, end, policy, plan.group_steps, micro_batches)
        if not plan.compile_ahead:
            return _without_grappler(xla_loop)
    # The plain loop is the first loop of a run, while XLA compiles (CompileAhead).
    return CompileAhead(xla_loop=_without_grappler(xla_loop), plain_loop=step_loop(one_step),
                        compile_xla=compile_xla, global_step=global_step,
                        stack=plan.group_steps if plan.group_steps > 1 else None, micro_batches=micro_batches)


class CompileAhead:
    """The whole-step XLA loop, whose first call in a fresh run does not wait for the XLA compile.

    Compiling the MLP's XLA step took about 1.1 s of its 1.8 s to the first step with an empty
    persistent cache, where Keras `fit` (no XLA) starts in 0.7 s (benchmarks/README.md,
    startup); the text Transformer's about 2.3 s. When the first call comes at global step 0,
    it runs its steps as one plain graph (the same step without XLA; gated writes as under XLA)
    while a background thread traces the XLA call (a group of steps, or one step) and compiles
    it by calling it for zero steps, which changes nothing. Every later call
    waits for that compile and runs under XLA. So which steps ran without XLA does not depend on
    timing: always the first loop of a run from step 0, and a resumed run (its first call after
    step 0) runs under XLA from its first step, as the uninterrupted run did there.

    Call `wait()` before tracing anything else that may touch the model or the optimizer.
    """

    def __init__(self, *, xla_loop: Callable, plain_loop: Callable, compile_xla: Callable,
                 global_step: tf.Variable, stack: int | None, micro_batches: int) -> None:
        self._xla_loop = xla_loop
        self._plain_loop = plain_loop
        self._compile_xla = compile_xla
        self._global_step = global_step
        self._stack = stack
        self._micro_batches = micro_batches
        self._called = False
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.ran_plain = False  # whether the first call ran without XLA (for the log and tests)

    def __call__(self, iterator: Any, num_steps: tf.Tensor) -> Any:
        if not self._called:
            self._called = True
            zeros = self._zeros(iterator)
            if zeros is not None and int(self._global_step.numpy()) == 0:
                self._plain_loop.get_concrete_function(iterator, num_steps)  # traced before the XLA step
                self._thread = threading.Thread(target=self._compile, args=(zeros,), daemon=False,
                                                name="tapeline-xla-compile")
                self._thread.start()
                self.ran_plain = True
                return self._plain_loop(iterator, num_steps)
        self.wait()
        return self._xla_loop(iterator, num_steps)

    def wait(self) -> None:
        """Blocks until the background compile (if any) has finished; re-raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                raise self._error

    def _compile(self, zeros: Any) -> None:
        try:
            with _no_grappler_calls():  # as the XLA loop's own calls
                self._compile_xla(zeros, tf.constant(0, tf.int32))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread by wait()
            self._error = e

    def _zeros(self, iterator: Any) -> Any:
        """Zeros shaped as the XLA call's batches (one step's, or a stacked group's), or None
        when a shape is not fixed."""
        specs = tf.nest.flatten(iterator.element_spec)
        if not all(isinstance(s, tf.TensorSpec) and s.shape.is_fully_defined() for s in specs):
            return None
        lead = [] if self._stack is None else [self._stack]
        return [tf.nest.pack_sequence_as(iterator.element_spec, [tf.zeros([*lead, *s.shape], s.dtype) for s in specs])
                for _ in range(self._micro_batches)]


def _single_xla_step(one_step: Callable) -> tuple[Callable, Callable]:
    """One step per XLA call, with a call that runs no step (for `CompileAhead`).

    The step sits in an XLA conditional on a runtime count (1 in the loop, 0 to compile), so
    both calls run one executable. Measured on the text Transformer (AMD, 2026-12-06, 5
    interleaved repetitions of 50 and 100 steps): 13.98 steps/s against 14.04 for the bare
    XLA step (per-repetition ratio median 1.03).

    Returns `run_step(batches) -> None` and the compile call `(batches, count) -> None`.
    """
    @tf.function(jit_compile=True, autograph=False)
    def xla_step(batches, count):
        def run():
            one_step(batches)
            return tf.constant(0)

        return tf.cond(count > 0, run, lambda: tf.constant(0))

    def run_step(batches):
        xla_step(batches, tf.constant(1))

    return run_step, _called_from_a_graph(xla_step)


def _grouped_loop(one_step: Callable, begin: Callable, end: Callable, policy: NonFinitePolicy, group: int,
                  micro_batches: int) -> tuple[Callable, Callable]:
    """XLA over the whole step on one device, up to `group` steps per XLA call.

    One launch and one executable for any count: an XLA while loop over `count` stacked
    batches. Only the batches of the steps to run are fetched (the data position stays exact);
    unused slots stay zeros (a TensorArray of the group's size: no gather to fill them, one copy
    of the group fewer) and are never read. A step after a halt inside the group changes no
    state (`NonFinitePolicy.live`); only the meters of this abandoned loop may move.

    Returns the loop and its XLA call `(stacked, count) -> None` (for `CompileAhead`).
    """
    def fetch_group(iterator, count):
        """The batches of `count` (1..group) steps, stacked as `[group, ...]`."""
        first = [next(iterator) for _ in range(micro_batches)]
        leaves = tf.nest.flatten(first)
        # A while loop over the fetches, not one conditional per slot: the group - 1
        # conditionals traced two branches each, about 0.08 s of the MLP's first trace under
        # cProfile (warm XLA cache); the loop traces its body once (benchmarks/README.md item 10).
        arrays = [tf.TensorArray(t.dtype, size=group, element_shape=t.shape).write(0, t) for t in leaves]

        def fetch(k, *arrays):
            batch = tf.nest.flatten([next(iterator) for _ in range(micro_batches)])
            with tf.control_dependencies(batch):  # the next fetch starts after this one: order kept
                k_next = k + 1
            return (k_next, *[a.write(k, t) for a, t in zip(arrays, batch)])

        _, *arrays = tf.while_loop(lambda k, *_: k < count, fetch, (tf.constant(1), *arrays))
        return tf.nest.pack_sequence_as(first, [a.stack() for a in arrays])

    @tf.function(jit_compile=True, autograph=False)
    def xla_steps(stacked, count):
        def body(j):
            one_step(tf.nest.map_structure(lambda t: t[j], stacked))
            return (j + 1,)
        tf.while_loop(lambda j: j < count, body, (tf.constant(0),))

    @tf.function(autograph=False)  # an explicit while loop (see _while)
    def loop(iterator, num_steps):
        begin()

        def body(i):
            count = tf.minimum(num_steps - i, group)
            count32 = tf.cast(count, tf.int32)  # the TensorArrays' and the XLA loop's index type
            xla_steps(fetch_group(iterator, count32), count32)
            return i + count

        return end(_while(policy, num_steps, body))

    return loop, _called_from_a_graph(xla_steps)


def _called_from_a_graph(xla_call: Callable) -> Callable:
    """`xla_call(batches, count)` called from a graph, as the loops call it: an eager call
    compiled a second, different executable (two entries in the persistent cache)."""
    @tf.function(autograph=False)
    def call(batches, count):
        xla_call(batches, count)

    return call


def _without_grappler(loop: Callable) -> Callable:
    """`loop`, instantiated without Grappler: for a loop whose step is all inside XLA.

    TensorFlow runs Grappler over a function, and over every function it calls, the first time
    the function runs (`FunctionCallOptions`: the config of that first call is the one kept).
    Under whole-step XLA that work is spent on the step's graph, which XLA lowers and optimizes
    on its own, and on the loop around it, which only fetches batches. Measured on the 2-core
    Xeon (2026-12-03), from the first call to the start of the XLA compile: MLP 0.31-0.44 s ->
    0.13-0.15 s, Transformer 0.76-1.02 s -> 0.30-0.40 s (4 and 3 alternating fresh processes).
    The option is per thread and set around every call, so the first call, wherever it happens,
    takes it; other functions of the process keep Grappler.
    """
    def call(iterator: Any, num_steps: tf.Tensor) -> Any:
        with _no_grappler_calls():
            return loop(iterator, num_steps)

    return call


@contextlib.contextmanager
def _no_grappler_calls() -> Iterator[None]:
    ctx = context.context()
    before = ctx.function_call_options
    config = config_pb2.ConfigProto.FromString(before.config_proto_serialized)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    ctx.function_call_options = context.FunctionCallOptions(executor_type=before.executor_type,
                                                            config_proto=config)
    try:
        yield
    finally:
        ctx.function_call_options = before


def _while(policy: NonFinitePolicy, num_steps: tf.Tensor, body: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """`i = 0; while i < num_steps and not policy.halt: i = body(i)`; returns the final i.

    Written as a `tf.while_loop`, not as a Python `while` for AutoGraph to convert. AutoGraph
    parsed and transformed the loop function's source once per process: in the MLP's first
    trace (cProfile) 0.69 of 3.14 s, and 1.47M Python calls where the explicit loop makes 0.80M.
    Unprofiled, the trace's CPU time went from a median of 1.74 s to 1.60 s (4 interleaved runs
    each on a noisy 2-core VM, whose spread overlaps): a small share of the time to first step.
    """
    def cond(i):
        return tf.logical_and(i < num_steps, tf.logical_not(policy.halt))

    (i,) = tf.while_loop(cond, lambda i: (body(i),), (tf.constant(0, tf.int64),))
    return i


def build_eval_loop(*, strategy: tf.distribute.Strategy, replica_eval: Callable, meters: EvalMeters,
                    traces: collections.Counter) -> Callable:
    """The compiled `loop(iterator, num_batches) -> dict of tensors`.

    Args:
      strategy: the run's strategy.
      replica_eval: `batch -> None`, run per replica: updates `meters`.
      meters: reset at the start, read at the end.
      traces: counts the traces (`traces["eval"]`).
    """
    @tf.autograph.experimental.do_not_convert
    def begin():
        traces["eval"] += 1
        meters.reset()

    @tf.function(autograph=False)  # an explicit while loop, as the train loop's (`_while`)
    def loop(iterator: Any, num_batches: tf.Tensor):
        begin()

        def body(j):
            strategy.run(replica_eval, args=(next(iterator),))
            return (j + 1,)

        tf.while_loop(lambda j: j < num_batches, body, (tf.constant(0, num_batches.dtype),))
        return _eval_end(num_batches, meters)

    return loop


@tf.autograph.experimental.do_not_convert
def _eval_end(num_batches: tf.Tensor, meters: EvalMeters) -> dict[str, Any]:
    return {"batches": num_batches, **meters.results()}
