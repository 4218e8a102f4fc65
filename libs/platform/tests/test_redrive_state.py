"""What a re-drive records: every offset below the committed one, plus single ones beyond."""

from __future__ import annotations

import pytest
from aiokafka.structs import OffsetAndMetadata
from tidemark_platform.dead_letters import RedriveState, dlq_name


def test_nothing_is_redriven_in_a_group_that_never_committed() -> None:
    for committed in (None, OffsetAndMetadata(-1, "")):
        state = RedriveState.from_commit(committed)
        assert not state.done(0)


def test_offsets_redriven_out_of_order_are_remembered_and_folded_into_the_commit() -> None:
    state = RedriveState.from_commit(OffsetAndMetadata(2, ""))
    assert [state.done(offset) for offset in range(3)] == [True, True, False]
    state.mark(4)
    assert (state.committed, state.beyond) == (2, {4})
    assert [state.done(offset) for offset in (3, 4)] == [False, True]
    restored = RedriveState.from_commit(OffsetAndMetadata(state.committed, state.metadata()))
    assert restored == state
    restored.mark(2)
    restored.mark(3)
    assert (restored.committed, restored.beyond) == (5, set())
    assert restored.metadata() == "[]"


def test_too_many_single_redrives_to_record_are_refused_rather_than_forgotten() -> None:
    state = RedriveState(0, set(range(1, 4000, 2)))
    with pytest.raises(ValueError, match="--all"):
        state.metadata()


def test_a_topic_and_its_dead_letter_topic_name_the_same_dead_letter_topic() -> None:
    assert dlq_name("backup.commands") == dlq_name("backup.commands.dlq") == "backup.commands.dlq"
