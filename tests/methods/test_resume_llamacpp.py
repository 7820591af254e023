"""Rerunning a finished method run is free and idempotent on every method: every request comes from the run's
cache (nothing is sent) and no row is written twice."""

from __future__ import annotations

import pytest

from gen.data.shards import read_table
from tests.methods.conftest import SELF_CHAT_ARGV, SELF_INSTRUCT_ARGV, ULTRACHAT_ARGV, run_gen, teacher_argv


@pytest.mark.parametrize("fixture,argv", [("self_instruct_run", SELF_INSTRUCT_ARGV), ("ultrachat_run", ULTRACHAT_ARGV),
                                          ("self_chat_run", SELF_CHAT_ARGV)])
def test_rerun_is_answered_from_the_cache_with_the_same_rows(fixture, argv, request, llamacpp_server):  # noqa: F811
    first = request.getfixturevalue(fixture)
    before = {s: sorted(read_table(first.out, s).column("id").to_pylist()) for s in ("train", "rejected")}
    again = run_gen(argv + teacher_argv(llamacpp_server), first.out)
    assert again.rc == 0
    stats = again.engine()
    assert stats["sent"] == 0 and stats["cache_hits"] == stats["requests"] == first.engine()["requests"]
    assert {s: sorted(read_table(first.out, s).column("id").to_pylist()) for s in ("train", "rejected")} == before
