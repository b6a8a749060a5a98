"""Validation of a workflow's step graph: caught at build time, never at run time."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ValidationError
from .types import StepDefinition, WorkflowDefinition


def validate_steps(workflow_id: str, steps: Sequence[StepDefinition]) -> None:
    if not steps:
        raise ValidationError(f"workflow {workflow_id} must have at least one step")
    ids: set[str] = set()
    for step in steps:
        if not isinstance(step, StepDefinition):
            raise ValidationError(f"workflow {workflow_id}: {step!r} is not a StepDefinition")
        validate_step(step)
        if step.id in ids:
            raise ValidationError(f"workflow {workflow_id}: duplicate step ID {step.id!r}")
        ids.add(step.id)
    for step in steps:
        for dep in step.dependencies:
            if dep == step.id:
                raise ValidationError(f"step {step.id} depends on itself")
            if dep not in ids:
                raise ValidationError(f"step {step.id} has invalid dependency: {dep}")
    cycle = find_cycle(steps)
    if cycle:
        raise ValidationError(f"workflow {workflow_id} has a dependency cycle: {' -> '.join(cycle)}")


def validate_step(step: StepDefinition) -> None:
    if not step.id or not isinstance(step.id, str):
        raise ValidationError("step ID is required")
    if not step.name or not isinstance(step.name, str):
        raise ValidationError(f"step {step.id}: step name is required")
    if step.executor is None or not callable(step.executor):
        raise ValidationError(f"step {step.id}: step executor is required")
    if step.timeout is not None and step.timeout < 0:
        raise ValidationError(f"step {step.id}: timeout must not be negative")
    if len(set(step.dependencies)) != len(step.dependencies):
        raise ValidationError(f"step {step.id}: duplicate dependency")
    if step.retry_policy is not None:
        validate_policy(step.retry_policy, step.id)
    if step.signal is not None and step.delay:
        raise ValidationError(f"step {step.id}: a step that waits for a signal cannot also have a delay")
    if (step.signal is not None or step.child_workflow is not None) and step.timeout:
        raise ValidationError(f"step {step.id}: a step that waits (a signal, a child workflow) has no per-attempt "
                              "timeout; give wait_for_signal a timeout, or the child's steps theirs")
    if step.child_input_from is not None and step.child_input_from not in step.dependencies:
        raise ValidationError(f"step {step.id}: input_from {step.child_input_from!r} must be one of its dependencies")


def validate_policy(policy: object, where: str = "retry policy") -> None:
    from .types import RetryPolicy

    if not isinstance(policy, RetryPolicy):
        raise ValidationError(f"{where}: {policy!r} is not a RetryPolicy")
    if not isinstance(policy.max_attempts, int) or policy.max_attempts < 1:
        raise ValidationError(f"{where}: max_attempts must be at least 1, got {policy.max_attempts}")
    if policy.initial_interval < 0 or policy.max_interval < 0:
        raise ValidationError(f"{where}: intervals must not be negative")
    if policy.multiplier < 1:
        raise ValidationError(f"{where}: multiplier must be at least 1, got {policy.multiplier}")


def validate_definition(definition: WorkflowDefinition) -> None:
    if not isinstance(definition, WorkflowDefinition):
        raise ValidationError("workflow cannot be None" if definition is None else f"{definition!r} is not a WorkflowDefinition")
    if not definition.id:
        raise ValidationError("workflow ID cannot be empty")
    if not definition.name:
        raise ValidationError(f"workflow {definition.id}: workflow name is required")
    validate_steps(definition.id, definition.steps)


def find_cycle(steps: Sequence[StepDefinition]) -> list[str] | None:
    """Return one cycle as a closed path (a -> b -> a), or None."""
    deps = {s.id: [d for d in s.dependencies] for s in steps}
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(deps, WHITE)
    for root in deps:
        if colour[root] != WHITE:
            continue
        # iterative DFS: a stack of (node, iterator over its dependencies)
        path: list[str] = [root]
        stack = [iter(deps[root])]
        colour[root] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
                continue
            if nxt not in colour:
                continue
            if colour[nxt] == GREY:
                start = path.index(nxt)
                # edges point from a step to what it depends on; report in run order
                return list(reversed(path[start:] + [nxt]))
            if colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(deps[nxt]))
    return None


def dependents(steps: Sequence[StepDefinition]) -> dict[str, list[str]]:
    """step id -> the ids of the steps that depend on it directly."""
    out: dict[str, list[str]] = {s.id: [] for s in steps}
    for s in steps:
        for d in s.dependencies:
            out[d].append(s.id)
    return out


def descendants(steps: Sequence[StepDefinition], step_id: str) -> set[str]:
    children = dependents(steps)
    seen: set[str] = set()
    todo = list(children.get(step_id, []))
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(children[s])
    return seen
