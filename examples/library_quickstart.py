"""The in-process Orchestrator with the in-memory store: no database needed."""

from orchwf import InMemoryStateManager, Orchestrator, StepBuilder, WorkflowBuilder


def fetch(ctx, data):
    return {"items": [1, 2, 3]}


def total(ctx, data):
    return {"total": sum(data["items"])}


workflow = (
    WorkflowBuilder("sum_items", "Sum items")
    .add_step(StepBuilder("fetch", "Fetch", fetch).build())
    .add_step(StepBuilder("total", "Total", total).with_dependencies("fetch").build())
    .build()
)

if __name__ == "__main__":
    orchestrator = Orchestrator(InMemoryStateManager())
    orchestrator.register_workflow(workflow)
    result = orchestrator.start_workflow("sum_items", {})
    print(result.success, result.output)
