"""`gen label --system-messages orca --cot` on the real Gemma-270M: each row carries an Orca-style system message
(stable per row across reruns) plus the chain-of-thought instruction, recorded in `system` and `params`."""

from __future__ import annotations

import json

from gen.data.shards import read_table
from gen.methods import orca
from tests.methods.conftest import run_gen, teacher_argv


def test_label_with_orca_system_messages_and_cot(llamacpp_server, tmp_path):  # noqa: F811
    inputs = tmp_path / "in.jsonl"
    questions = ["What is the capital of Italy?", "Name a fruit that is yellow.", "What is 3 plus 4?"]
    inputs.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in questions))
    argv = ["label", "--input", str(inputs), "--system-messages", "orca", "--cot", "--max-new-tokens", "12",
            "--temperature", "0"] + teacher_argv(llamacpp_server)
    first = run_gen(argv, tmp_path / "run")
    assert first.rc == 0
    rows = read_table(tmp_path / "run").to_pylist()
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(questions)
    shipped = orca.load_system_messages()
    assert len(shipped) == 16
    for row in rows:
        system = row["system"]
        assert system.endswith(orca.COT_INSTRUCTION)
        assert system[: -len(orca.COT_INSTRUCTION)].strip() in shipped
        params = json.loads(row["params"])
        assert params["system_messages"] == "orca" and params["cot"] is True
    # Reruns draw the same message per row, so they are answered from the cache.
    again = run_gen(argv, tmp_path / "run")
    assert again.rc == 0 and read_table(tmp_path / "run").num_rows == 3


def test_fixed_system_message_and_orca_draws_are_seeded(tmp_path):
    messages = orca.load_system_messages()
    picks = {orca.pick_system(f"row{i}", messages, seed=0) for i in range(64)}
    assert len(picks) > 8  # spread over the set
    assert orca.pick_system("row1", messages, 0) == orca.pick_system("row1", messages, 0)
    fixed = orca.system_chooser(orca.SystemMessageOptions(system="Be brief.", system_messages="orca", cot=True))
    assert fixed([{"role": "user", "content": "hi"}]) == f"Be brief.\n\n{orca.COT_INSTRUCTION}"
    assert orca.system_chooser(orca.SystemMessageOptions()) is None
