"""Load the user's workflow definitions from ``module[:attr]``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ValidationError
from ..orchestrator import Orchestrator
from ..tracing import HOOK
from ..types import WorkflowDefinition


def load_definitions(spec: str) -> list[WorkflowDefinition]:
    """``module`` gives every WorkflowDefinition at its top level; ``module:attr`` gives the
    attribute: an Orchestrator, a definition, or a list of definitions."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValidationError(f"--app {spec!r}: expected module or module:attribute")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValidationError(f"--app {spec!r}: cannot import {module_name}: {exc}") from exc
    if attr:
        try:
            target: Any = module
            for part in attr.split("."):
                target = getattr(target, part)
        except AttributeError:
            raise ValidationError(f"--app {spec!r}: {module_name} has no attribute {attr}") from None
        found = _definitions_of(target, spec)
    else:
        found = [v for v in vars(module).values() if isinstance(v, WorkflowDefinition)]
    if not found:
        raise ValidationError(f"--app {spec!r}: no WorkflowDefinition found")
    by_id: dict[str, WorkflowDefinition] = {}
    for d in found:
        by_id[d.id] = d
    # Children before the workflows that start them (the order they are registered in);
    # a cycle of child workflows is refused before the daemon starts.
    from ..client import registration_order

    return registration_order(by_id.values())


def tracing_hook(spec: str) -> Callable[[], object] | None:
    """The app module's ``configure_tracing``, if it has one: each worker calls it after
    fork to set up OpenTelemetry (tracing.py). Call after load_definitions."""
    module = sys.modules[spec.partition(":")[0]]
    hook = getattr(module, HOOK, None)
    if hook is not None and not callable(hook):
        raise ValidationError(f"--app {spec!r}: {HOOK} must be a function")
    return hook


def _definitions_of(target: Any, spec: str) -> list[WorkflowDefinition]:
    if isinstance(target, Orchestrator):
        return target.workflows
    if isinstance(target, WorkflowDefinition):
        return [target]
    if isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        items = list(target)
        if all(isinstance(x, WorkflowDefinition) for x in items):
            return items
    raise ValidationError(f"--app {spec!r}: expected an Orchestrator, a WorkflowDefinition or a list of them")
