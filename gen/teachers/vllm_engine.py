"""`vllm:<model-or-path>`: vLLM's offline engine inside this process.

The engine hands over a whole round at once (`takes_whole_batch`), and the whole round goes to ONE `LLM.chat` call
with one `SamplingParams` per conversation (vLLM pairs them one to one), so continuous batching sees every request
at once — never slices of 50. A prompt that cannot run (longer than the context) is reported as a `PermanentError`
for that request alone; the rest of the round still runs.

vLLM is imported only when this backend is chosen; without it the user gets a one-line `MissingDependency`.
Engine options (`max_model_len`, `dtype`, `enforce_eager`, `seed`, `gpu_memory_utilization`,
`tensor_parallel_size`, ...) pass straight to `vllm.LLM`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gen.errors import MissingDependency, UserError
from gen.teachers.backend import Backend
from gen.teachers.base import (
    ChatRequest,
    Completion,
    PermanentError,
    SamplingParams,
    Teacher,
    TeacherError,
    TextRequest,
)

# Local weights: no key, no price; their own license decides (`gen.teachers.terms`).
BACKEND = Backend(prefix="vllm")

# Options the CLI may hand every backend that make no sense for an in-process engine.
NOT_FOR_VLLM = ("base_url", "max_connections")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise MissingDependency("vllm", "vllm") from exc
    return vllm


class VllmTeacher(Teacher):
    """An in-process `vllm.LLM`; `complete_batch(requests)` answers a whole round with one `chat` call."""

    backend = BACKEND.prefix
    takes_whole_batch = True

    def __init__(self, model: str, **engine_options: Any):
        super().__init__(model)
        vllm = _import_vllm()
        self._vllm = vllm
        try:
            self.llm = vllm.LLM(model=model, **engine_options)
        except TypeError as exc:  # an engine option vLLM does not know
            raise UserError(f"--teacher vllm:{model}: bad engine option: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def sampling_params(self, params: SamplingParams) -> Any:
        extra: dict[str, Any] = {}
        if params.json_schema is not None:
            extra = structured_output_option(self._vllm, params.json_schema)
        return self._vllm.SamplingParams(
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
            stop=list(params.stop) or None, seed=params.seed, **extra)

    def prompt_length(self, request: ChatRequest) -> int:
        """Tokens of `request` after the model's chat template (what vLLM will prefill)."""
        ids = self.tokenizer.apply_chat_template(request.message_dicts(), tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return len(ids)

    raw_completion = True  # `LLM.generate` on a prompt (`TextRequest`)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def complete_batch(self, requests: Sequence[ChatRequest | TextRequest]) -> list[Completion | TeacherError]:
        """One answer (or error) per request, in order. Input: the whole round; output: same length. Chat requests
        go to one `LLM.chat` call, raw completions (`TextRequest`) to one `LLM.generate` call."""
        texts = [i for i, r in enumerate(requests) if isinstance(r, TextRequest)]
        if not texts:
            return self._complete_chats(requests)  # type: ignore[arg-type]
        answers: list[Completion | TeacherError | None] = [None] * len(requests)
        chats = [i for i, r in enumerate(requests) if not isinstance(r, TextRequest)]
        if chats:
            for index, answer in zip(chats, self._complete_chats([requests[i] for i in chats])):  # type: ignore[misc]
                answers[index] = answer
        runnable = []
        for index in texts:
            length = len(self.tokenizer(requests[index].prompt, add_special_tokens=False)["input_ids"])
            if length >= self.max_model_len:
                answers[index] = PermanentError(f"prompt of {length} tokens does not fit max_model_len "
                                                f"{self.max_model_len}")
            else:
                runnable.append(index)
        if runnable:
            params = [self.sampling_params(requests[i].params) for i in runnable]
            # The prompt already holds the template's special tokens (e.g. BOS): add none.
            prompts = [{"prompt_token_ids": self.tokenizer(requests[i].prompt, add_special_tokens=False)["input_ids"]}
                       for i in runnable]
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
            for index, output in zip(runnable, outputs):
                answers[index] = _to_completion(output)
        return answers  # type: ignore[return-value]

    def _complete_chats(self, requests: Sequence[ChatRequest]) -> list[Completion | TeacherError]:
        answers: list[Completion | TeacherError | None] = [None] * len(requests)
        runnable: list[int] = []
        for index, request in enumerate(requests):
            length = self.prompt_length(request)
            if length >= self.max_model_len:
                answers[index] = PermanentError(f"prompt of {length} tokens does not fit max_model_len "
                                                f"{self.max_model_len}")
            else:
                runnable.append(index)
        if runnable:
            params = [self.sampling_params(requests[i].params) for i in runnable]
            # One SamplingParams object for the whole call when all requests share it (the common case).
            same = len({requests[i].params for i in runnable}) == 1
            outputs = self.llm.chat([requests[i].message_dicts() for i in runnable],
                                    sampling_params=params[0] if same else params, use_tqdm=False)
            for index, output in zip(runnable, outputs):
                answers[index] = _to_completion(output)
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        """Shut the engine down and free its memory (vLLM has no public close; dropping it ends the engine core)."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None),
                                                                "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        import gc
        gc.collect()


def structured_output_option(vllm: Any, json_schema: str) -> dict[str, Any]:
    """The `vllm.SamplingParams` keyword that constrains decoding to `json_schema` (canonical JSON text): vLLM >= 0.11
    calls it `structured_outputs=StructuredOutputsParams(json=...)`, older releases `guided_decoding=
    GuidedDecodingParams(json=...)`."""
    schema = json.loads(json_schema)
    from vllm import sampling_params as module

    if hasattr(module, "StructuredOutputsParams"):
        return {"structured_outputs": module.StructuredOutputsParams(json=schema)}
    if hasattr(module, "GuidedDecodingParams"):  # pragma: no cover - vLLM < 0.11
        return {"guided_decoding": module.GuidedDecodingParams(json=schema)}
    raise PermanentError(f"vllm {getattr(vllm, '__version__', '?')}: no structured output support for json_schema")


def _to_completion(output: Any) -> Completion:
    choice = output.outputs[0]
    reason = choice.finish_reason or "stop"  # vLLM says "stop" / "length" (and "abort" when cancelled)
    return Completion(text=choice.text, finish_reason=str(reason),
                      prompt_tokens=len(output.prompt_token_ids or ()), completion_tokens=len(choice.token_ids))


def from_spec(model: str, **options: Any) -> VllmTeacher:
    """`vllm:<model-or-path>`; options are `vllm.LLM` engine arguments (None values are dropped)."""
    misplaced = [name for name in NOT_FOR_VLLM if options.get(name) is not None]
    if misplaced:
        flags = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        raise UserError(f"--teacher vllm:{model}: option(s) {flags} do not apply to the in-process vllm backend")
    engine_options = {k: v for k, v in options.items() if v is not None and k not in NOT_FOR_VLLM}
    return VllmTeacher(model, **engine_options)
