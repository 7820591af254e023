"""`hf:PATH`: a local transformers causal LM generating inside this process (a student checkpoint, a small teacher).

`hf:` means the same as in `gen logits --teacher hf:PATH`: a local model directory (config.json) or a .gguf file,
loaded offline by `gen.logits.capture.load_hf_causal_lm`. Like the vLLM backend it takes a whole round at once
(`takes_whole_batch`): requests are grouped by what one `generate` call must share (max_tokens, stop strings),
sorted by prompt length and sent in left-padded batches of `batch_size`.

Sampling is per request even inside one batch: `generate` runs greedy, and `RequestSampler` (a logits processor)
applies each row's presence/frequency penalties, temperature and top-p and draws the row's token with the row's own
seeded `torch.Generator`, so an answer depends on its request alone, not on which batch it rode in (up to float
rounding of padded batches). temperature 0 is plain greedy. Stop strings end a row (transformers'
`StopStringCriteria`) and are cut from the text as the OpenAI API does. JSON-schema constrained decoding is not
available here: such a request runs unconstrained and its `Completion.sent` says so (judges parse tolerantly).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gen.errors import UserError
from gen.teachers.backend import Backend
from gen.teachers.base import ChatRequest, Completion, PermanentError, SamplingParams, Teacher, TeacherError

# Local weights: no key, no price; their own license decides (`gen.teachers.terms`).
BACKEND = Backend(prefix="hf")

# Options the CLI may hand every backend that make no sense for a local model.
NOT_FOR_HF = ("base_url", "transport", "tensor_parallel_size", "max_connections")


def weights_fingerprint(path: str | Path, sample_bytes: int = 1 << 16) -> str:
    """12 hex digits that change when the weights at `path` change (retraining into the same directory), so the
    request cache never serves a previous checkpoint's answers. Reads each weight file's size, head and tail (not
    the whole file: a 2 GB checkpoint would take seconds) plus config.json."""
    location = Path(path)
    files = [location] if location.is_file() else sorted(
        p for p in location.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin", ".gguf", ".pt"} or p.name == "config.json"))
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(sample_bytes))
            if size > sample_bytes:
                handle.seek(max(size - sample_bytes, sample_bytes))
                digest.update(handle.read(sample_bytes))
    return digest.hexdigest()[:12]


class RequestSampler:
    """A transformers logits processor that samples each row with its own request's settings (see module doc).

    Rows with temperature 0 keep their (penalised) scores and `generate`'s greedy step takes the argmax; sampled rows
    get every score -inf except the token drawn for them, which greedy then picks."""

    def __init__(self, params: Sequence[SamplingParams], prompt_width: int):
        self.params = list(params)
        self.prompt_width = prompt_width
        self.generators: list[Any] | None = None

    def _generators(self, device: Any) -> list[Any]:
        import torch

        if self.generators is None:
            self.generators = []
            for p in self.params:
                generator = torch.Generator(device=device)
                if p.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(p.seed)
                self.generators.append(generator)
        return self.generators

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()
        generated = input_ids[:, self.prompt_width:]
        if generated.shape[1] and any(p.presence_penalty or p.frequency_penalty for p in self.params):
            # OpenAI's penalties: minus frequency x count and minus presence once, over the tokens generated so far.
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            frequency = scores.new_tensor([p.frequency_penalty for p in self.params]).unsqueeze(1)
            presence = scores.new_tensor([p.presence_penalty for p in self.params]).unsqueeze(1)
            scores = scores - frequency * counts - presence * (counts > 0).to(scores.dtype)
        generators = self._generators(scores.device)
        for row, p in enumerate(self.params):
            if p.temperature <= 0:
                continue
            probs = torch.softmax(scores[row] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                # Nucleus: keep the smallest set of most likely tokens whose mass reaches top_p (the first always).
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs >= p.top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            token = torch.multinomial(probs, 1, generator=generators[row])
            scores[row] = float("-inf")
            scores[row, token] = 0.0
        return scores


class HFTeacher(Teacher):
    """A local transformers model; `complete_batch(requests)` answers a whole round with batched `generate` calls."""

    backend = BACKEND.prefix
    takes_whole_batch = True

    def __init__(self, path: str, *, device: str | None = None, dtype: str | None = None, batch_size: int = 16):
        from gen.logits.capture import load_hf_causal_lm

        super().__init__(path)
        if batch_size < 1:
            raise UserError(f"hf:{path}: batch_size {batch_size}: must be at least 1")
        self.tokenizer, self.llm, self.device = load_hf_causal_lm(path, device=device, dtype=dtype)
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(f"hf:{path}: the tokenizer has no chat template (hf: generation needs one to turn "
                            f"messages into a prompt)")
        self.batch_size = batch_size
        self.revision = weights_fingerprint(path)
        config = self.llm.config
        self.max_model_len = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)
        eos = self.llm.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else [int(e) for e in (eos or [])]
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0))

    @property
    def teacher_id(self) -> str:
        """`hf:PATH@<weights fingerprint>`: a retrained checkpoint at the same path is a different teacher."""
        return f"hf:{self.model}@{self.revision}"

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """Token ids of `request` after the model's chat template, generation prompt included."""
        ids = self.tokenizer.apply_chat_template(request.message_dicts(), tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def complete_batch(self, requests: Sequence[ChatRequest]) -> list[Completion | TeacherError]:
        """One answer (or error) per request, in order. Input: the whole round; output: same length."""
        answers: list[Completion | TeacherError | None] = [None] * len(requests)
        groups: dict[tuple[int, tuple[str, ...]], list[tuple[int, list[int]]]] = defaultdict(list)
        for index, request in enumerate(requests):
            ids = self.prompt_ids(request)
            if len(ids) + 1 > self.max_model_len:
                answers[index] = PermanentError(f"prompt of {len(ids)} tokens does not fit the model's context of "
                                                f"{self.max_model_len}")
            else:
                groups[(request.params.max_tokens, request.params.stop)].append((index, ids))
        for (max_tokens, stop), members in groups.items():
            members.sort(key=lambda member: len(member[1]))  # similar lengths together: less padding
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                texts = self._generate([ids for _, ids in chunk], [requests[i].params for i, _ in chunk],
                                       max_tokens, stop)
                for (index, _), answer in zip(chunk, texts):
                    answers[index] = answer
        return answers  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], params: list[SamplingParams], max_tokens: int,
                  stop: tuple[str, ...]) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        width = max(len(p) for p in prompts)
        # Room left in the context caps the new tokens (a prompt near the limit gets a shorter answer, "length").
        new_tokens = max(1, min(max_tokens, self.max_model_len - width))
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every row's next token is at the same position
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=self.pad_id,
                                  eos_token_id=self.eos_ids or None, stop_strings=list(stop) or None)
        with torch.inference_mode():
            output = self.llm.generate(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                       generation_config=config, tokenizer=self.tokenizer,
                                       logits_processor=LogitsProcessorList([RequestSampler(params, width)]))
        completions = []
        for row, ids in enumerate(prompts):
            tokens = output[row, width:].tolist()
            ended = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
            if ended is not None:
                tokens = tokens[:ended + 1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=None)
            if cut is not None:
                text = text[:cut]
            finished = ended is not None or cut is not None
            # Rows that stopped early are padded by generate: count only what this row generated.
            count = len(tokens) if ended is not None or cut is None else _tokens_until_padding(tokens, self.pad_id)
            sent = None
            if params[row].json_schema is not None:
                sent = {**params[row].to_dict(), "json_schema": None}
            completions.append(Completion(text=text, finish_reason="stop" if finished else "length",
                                          prompt_tokens=len(ids), completion_tokens=count, sent=sent))
        return completions

    def close(self) -> None:
        """Drop the model (and free GPU memory)."""
        if self.__dict__.pop("llm", None) is not None:
            import gc

            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass


def _tokens_until_padding(tokens: list[int], pad_id: int) -> int:
    """Generated tokens of a row that a stop string ended, before generate's trailing padding."""
    count = len(tokens)
    while count and tokens[count - 1] == pad_id:
        count -= 1
    return count


def from_spec(model: str, **options: Any) -> HFTeacher:
    """`hf:PATH`; options: device, dtype, batch_size (None values are dropped)."""
    misplaced = [name for name in NOT_FOR_HF if options.get(name) is not None]
    if misplaced:
        flags = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        raise UserError(f"--teacher hf:{model}: option(s) {flags} do not apply to a local transformers model")
    unknown = set(options) - set(NOT_FOR_HF) - {"device", "dtype", "batch_size"}
    if unknown:
        raise UserError(f"--teacher hf:{model}: unknown option(s) {', '.join(sorted(unknown))} (hf: takes device, "
                        f"dtype, batch_size)")
    return HFTeacher(model, **{k: v for k, v in options.items() if v is not None and k not in NOT_FOR_HF})
