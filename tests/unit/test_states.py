"""The state table: its shape, and docs/state-machine.md drawing exactly it."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.states import (
    CANCEL_DIRECTLY,
    CANCEL_REMOTELY,
    DEPLOYMENT_LIVE,
    DEPLOYMENT_TRANSITIONS,
    STARTS,
    STEP_FOR_STATE,
    TERMINAL,
    TRANSITIONS,
    DeploymentState,
    State,
)
from orchestrator.steps import STEPS

DOC = Path(__file__).parents[2] / "docs" / "state-machine.md"


def test_every_state_has_a_row_and_terminal_states_are_left_only_for_a_deployment() -> None:
    """No step works a terminal state: a finished job only records a deployment being
    deleted (a self-transition) or is deployed again (`tunectl deploy`); cancelled is final."""
    assert set(TRANSITIONS) == set(State)
    for state in TERMINAL:
        assert TRANSITIONS[state] <= {state, State.DEPLOYING}
        assert state not in STEP_FOR_STATE
    assert TRANSITIONS[State.CANCELLED] == frozenset()


def test_every_non_terminal_state_has_a_known_step_and_can_fail() -> None:
    for state in set(State) - TERMINAL:
        assert STEP_FOR_STATE[state] in STEPS
        assert State.FAILED in TRANSITIONS[state]


def test_every_state_is_reachable_from_queued() -> None:
    seen, todo = {State.QUEUED}, [State.QUEUED]
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert seen == set(State)


def test_cancel_and_start_tables_use_allowed_moves() -> None:
    for state in CANCEL_DIRECTLY:
        assert State.CANCELLED in TRANSITIONS[state]
    for state in CANCEL_REMOTELY:
        assert State.CANCELLING in TRANSITIONS[state]
    for source, target in STARTS.items():
        assert target in TRANSITIONS[source]
        assert STEP_FOR_STATE[source] == STEP_FOR_STATE[target]


def test_the_mermaid_diagram_draws_exactly_the_table() -> None:
    job_section = DOC.read_text().split("## Deployments")[0]
    edges = set(re.findall(r"^\s+(\S+) --> (\S+)$", job_section, re.MULTILINE))
    drawn = {(a, b) for a, b in edges if "[*]" not in (a, b)}
    table = {(s.value, t.value) for s, targets in TRANSITIONS.items() for t in targets}

    assert drawn == table
    assert ("[*]", "queued") in edges
    assert {(s.value, "[*]") for s in TERMINAL} <= edges


def test_the_deployment_diagram_draws_exactly_the_deployment_table() -> None:
    section = DOC.read_text().split("## Deployments")[1]
    edges = set(re.findall(r"^\s+(\S+) --> (\S+)$", section, re.MULTILINE))
    drawn = {(a, b) for a, b in edges if "[*]" not in (a, b)}
    table = {(s.value, t.value) for s, targets in DEPLOYMENT_TRANSITIONS.items()
             for t in targets}

    assert set(DEPLOYMENT_TRANSITIONS) == set(DeploymentState)
    assert drawn == table
    assert ("[*]", "creating") in edges
    assert {(s.value, "[*]") for s in DeploymentState if not DEPLOYMENT_TRANSITIONS[s]} <= edges
    assert {s for s in DeploymentState if DEPLOYMENT_TRANSITIONS[s]} == DEPLOYMENT_LIVE
