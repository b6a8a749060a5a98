"""Step semantics shared by the in-process Orchestrator and the daemon's workers.

Data flow is the Go ORCHWF package's (README, "Concepts"): a step's input is the workflow input,
then each dependency's output (flattened, and namespaced under the dependency's ID),
then the workflow context (every completed step's output, flattened and namespaced).
The workflow output is the flat merge of step outputs in completion order.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from .errors import StepTimeoutError, ValidationError, WorkflowCancelledError
from .jsonvalue import check_json_object
from .types import JSONDict, StepContext, StepExecutor


def prepare_step_input(
    workflow_input: Mapping[str, Any],
    dependency_outputs: Iterable[tuple[str, Mapping[str, Any]]],
    context: Mapping[str, Any],
) -> JSONDict:
    data: JSONDict = dict(workflow_input)
    for dep_id, output in dependency_outputs:
        data.update(output)
        data[dep_id] = dict(output)
    data.update(context)
    # a deep copy: an executor that mutates its input must not reach into the
    # context, another step's output or another (concurrent) step's input
    return copy.deepcopy(data)


def merge_step_output(output: JSONDict, context: JSONDict, step_id: str, step_output: Mapping[str, Any]) -> None:
    context[step_id] = dict(step_output)
    context.update(step_output)
    output.update(step_output)


def normalize_output(result: Any, step_id: str) -> JSONDict:
    """An executor returns a JSON object or None; anything else fails the attempt."""
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise ValidationError(
            f"step {step_id} returned {type(result).__name__}; an executor must return a dict or None"
        )
    return check_json_object(dict(result), f"output of step {step_id}")


def call_executor(executor: StepExecutor, ctx: StepContext, data: JSONDict, timeout: float | None = None) -> Any:
    """Call a sync or ``async def`` executor in the current thread.

    An async executor gets its own event loop, and its timeout cancels the coroutine.
    """
    result = executor(ctx, data)
    if inspect.isawaitable(result):
        awaitable = result

        async def runner() -> Any:
            if timeout is None:
                return await awaitable
            try:
                return await asyncio.wait_for(awaitable, timeout)
            except asyncio.TimeoutError:
                raise StepTimeoutError(f"step {ctx.step_id} timed out after {timeout:g}s") from None

        result = asyncio.run(runner())
    return result


def run_attempt(
    executor: StepExecutor,
    ctx: StepContext,
    data: JSONDict,
    timeout: float | None,
    cancel: Future[None] | None = None,
) -> JSONDict:
    """Run one attempt on its own thread, and stop waiting at the deadline or on cancel.

    An executor that ignores its deadline is abandoned: ``ctx.cancelled`` is set, the
    attempt fails with StepTimeoutError, and whatever it returns later is discarded.
    """
    outcome: Future[Any] = Future()

    def target() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = call_executor(executor, ctx, data, timeout)
        except Exception as exc:  # noqa: BLE001 - reported to the waiting thread
            error = exc
        except BaseException as exc:  # noqa: BLE001 - CancelledError, SystemExit, ...
            # raised on this step's own thread, so not meant for the process or the
            # caller: an ordinary failure of the attempt (it must not escape the
            # orchestrator and leave the instance running forever)
            detail = f": {exc}" if str(exc) else ""
            error = RuntimeError(f"step {ctx.step_id} raised {type(exc).__name__}{detail}")
            error.__cause__ = exc
        if cancel is not None and cancel.done():
            # finished after the workflow was cancelled: a late result, discarded
            # (whether the waiting thread noticed the cancel first is a race; this is not)
            error = WorkflowCancelledError(f"workflow {ctx.workflow_instance_id} was cancelled")
        if outcome.done():
            return
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(value)

    # the caller's context variables (the step's log context) follow the attempt's thread
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                              name=f"orchwf-step-{ctx.step_id}", daemon=True)
    thread.start()
    waiting: list[Future[Any]] = [outcome] if cancel is None else [outcome, cancel]
    done, _ = wait(waiting, timeout=timeout, return_when=FIRST_COMPLETED)
    if outcome in done:
        return normalize_output(outcome.result(), ctx.step_id)
    ctx.cancelled.set()
    if cancel is not None and cancel in done:
        raise WorkflowCancelledError(f"workflow {ctx.workflow_instance_id} was cancelled")
    raise StepTimeoutError(f"step {ctx.step_id} timed out after {timeout:g}s")
