"""The in-process Orchestrator and the daemon agree on every scenario: instance and step
statuses, outputs, inputs, errors, attempts, per-step and workflow-level event sequences,
event data and compensation order.

Each (scenario, aspect) is its own test, so a difference fails exactly where it is. The
documented differences are filtered in paritykit (DAEMON_ONLY_STEPS, DAEMON_ONLY_EVENTS,
DATA_NOT_COMPARED, each pointing to the README); every other difference found is listed
in KNOWN_DIFFERENCES as a strict xfail that names it.
"""

from __future__ import annotations

import pytest
from paritykit import ASPECTS, SCENARIOS, pseudo_step_events, steps, view_status

from orchwf.lifecycle import COMPENSATE_STEP

ENGINES = ("inproc", "daemon")

#: (scenario, aspect) -> the precise difference (strict xfail: fixing one must update this).
#: Each is documented in README.md, "The daemon" ("Where the engines differ").
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
}


def cases() -> list:
    out = []
    for scenario in SCENARIOS:
        for aspect in ASPECTS:
            reason = KNOWN_DIFFERENCES.get((scenario, aspect))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(scenario, aspect, marks=marks, id=f"{scenario}-{aspect}"))
    return out


@pytest.mark.parametrize(("scenario", "aspect"), cases())
def test_engines_agree(parity_runs, scenario: str, aspect: str) -> None:
    """Both engines give the same view of the scenario's run."""
    view = ASPECTS[aspect]
    assert view(parity_runs(scenario, "inproc")) == view(parity_runs(scenario, "daemon"))


# -- what each scenario must do (so that agreement is not agreement on a wrong result) ----

C, F, S, X = "completed", "failed", "skipped", "cancelled"
EXPECTED = {
    "dag": ({"instance": C, "steps": dict.fromkeys(["start", "left", "mid", "right", "join"], C)}, []),
    "retries": ({"instance": C, "steps": {"flaky": C, "after": C}}, []),
    "optional": ({"instance": C, "steps": {"metrics": S, "render": C}}, []),
    "timeout": ({"instance": F, "steps": {"slow": F, "after": X}}, []),
    "timeout_ignored": ({"instance": F, "steps": {"slow": F, "after": X}}, []),
    "compensation": ({"instance": F, "steps": {"reserve": C, "charge": C, "ship": F, "notify": X}},
                     ["charge", "reserve"]),
    "compensation_failure": ({"instance": F, "steps": {"reserve": C, "charge": C, "ship": F}},
                             ["charge", "reserve"]),
    "cancel": ({"instance": X, "steps": {"book": C, "hold": C, "gate": X, "after": X}}, ["hold", "book"]),
    "resume": ({"instance": C, "steps": {"extract": C, "load": C}}, []),
    "resume_compensated": ({"instance": C, "steps": {"extract": C, "load": C}}, ["extract"]),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_outcome(parity_runs, scenario: str, engine: str) -> None:
    """The statuses and the compensation order (newest first) are the expected ones."""
    snap = parity_runs(scenario, engine)
    statuses, compensations = EXPECTED[scenario]
    assert view_status(snap) == statuses
    assert snap.compensations == compensations


@pytest.mark.parametrize("engine", ENGINES)
def test_scenario_details(parity_runs, engine: str) -> None:
    """Outputs, attempts and events that pin down what each scenario exercised."""
    dag = parity_runs("dag", engine)
    assert dag.instance.output["total"] == 11 + 12 + 13
    assert dag.instance.step("join").input["left"]["l_val"] == 11  # a parent's output, namespaced
    assert dag.instance.step("left").output["l_val_input_keys"] == ["doubled", "seed", "start"]

    flaky = parity_runs("retries", engine).instance.step("flaky")
    assert (flaky.output, flaky.attempts, flaky.retry_count) == ({"succeeded_on": 3}, 3, 2)

    render = parity_runs("optional", engine).instance.step("render")
    assert render.output == {"pages": 3, "metrics_seen": {}}  # a skipped parent gives {}

    timeout = parity_runs("timeout", engine).instance
    assert timeout.error == "step slow failed after 1 attempts: step slow timed out after 0.5s"
    ignored = parity_runs("timeout_ignored", engine).instance
    assert ignored.error == "step slow failed after 1 attempts: step slow timed out after 0.3s"
    assert ignored.step("slow").output == {}  # the late result is discarded

    failed = parity_runs("compensation_failure", engine)
    kinds = [(e.event_type, e.event_data.get("step_id")) for e in failed.events if "compensat" in e.event_type]
    assert kinds == [("step.compensation_failed", "charge"), ("step.compensated", "reserve")]

    resumed = parity_runs("resume", engine).instance
    assert resumed.output == {"rows": 40, "loaded": 40} and resumed.retry_count == 1


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_compensate_pseudo_step_is_the_only_extra_step(parity_runs, scenario: str) -> None:
    """The daemon runs compensators as a '$compensate' pseudo-step (README, "What the
    daemon guarantees"), but a finished instance shows no trace of it: no step, no step
    events. So the allow-list hides nothing in these (finished) runs."""
    inproc, daemon = parity_runs(scenario, "inproc"), parity_runs(scenario, "daemon")
    defined = {s.step_id for s in inproc.instance.steps}
    assert COMPENSATE_STEP not in defined and pseudo_step_events(inproc) == []
    assert {s.step_id for s in daemon.instance.steps} == set(steps(daemon)) == defined
    assert pseudo_step_events(daemon) == []
