"""Rows from every method load in `datasets` (the Arrow builder over the shard files) and train one step with TRL's
SFTTrainer on a tiny model: the schema is what those tools expect, as written."""

from __future__ import annotations

from gen.data.shards import shard_paths


def test_rows_from_every_method_load_in_datasets_and_sfttrainer(evol_run, self_instruct_run, ultrachat_run,
                                                                self_chat_run, tiny_llama_dir, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    files = []
    for run in (evol_run, self_instruct_run, ultrachat_run, self_chat_run):
        paths = shard_paths(run.out, "train")
        assert paths, run.out
        files += [str(p) for p in paths]
    dataset = datasets.load_dataset("arrow", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    methods = set(dataset["method"])
    assert methods == {"evol_instruct", "self_instruct", "ultrachat", "self_chat"}
    assert all(m[0]["role"] == "user" and m[-1]["role"] == "assistant" for m in dataset["messages"])

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2, max_length=128,
                       report_to=[], save_strategy="no", use_cpu=True, logging_steps=1)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
