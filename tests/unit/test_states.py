"""The state table: its shape, and docs/state-machine.md drawing exactly it."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.states import (
    CANCEL_DIRECTLY,
    CANCEL_REMOTELY,
    STARTS,
    STEP_FOR_STATE,
    TERMINAL,
    TRANSITIONS,
    State,
)
from orchestrator.steps import STEPS

DOC = Path(__file__).parents[2] / "docs" / "state-machine.md"


def test_every_state_has_a_row_and_terminal_states_have_no_exits() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


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
    edges = set(re.findall(r"^\s+(\S+) --> (\S+)$", DOC.read_text(), re.MULTILINE))
    drawn = {(a, b) for a, b in edges if "[*]" not in (a, b)}
    table = {(s.value, t.value) for s, targets in TRANSITIONS.items() for t in targets}

    assert drawn == table
    assert ("[*]", "queued") in edges
    assert {(s.value, "[*]") for s in TERMINAL} <= edges
