"""`TeacherSpec`: which teacher to open and how, as plain typed data (picklable: Ray actors open their own teacher
from it). Built once from the CLI flags; library code never sees the flags."""

from __future__ import annotations

from dataclasses import dataclass

from gen.data.secrets import redact_url


@dataclass(frozen=True)
class TeacherSpec:
    """`name` is the backend spec string (`openai:gpt-4o-mini`, `anthropic:...`, `vllm:...`, `llamacpp[:FILE]`).

    base_url: the endpoint of an HTTP backend, or several comma-separated replicas of one model.
    transport: the HTTP client of the HTTP backends (`aiohttp` or `sdk`; None: the backend's default).
    tensor_parallel_size: GPUs one in-process vLLM engine spans (None: the backend's default).
    """

    name: str = "llamacpp"
    base_url: str | None = None
    transport: str | None = None
    tensor_parallel_size: int | None = None

    def __repr__(self) -> str:
        # A spec reaches logs and Ray error messages: credentials written into a URL must not.
        url = ",".join(redact_url(u) for u in self.base_url.split(",")) if self.base_url else None
        return (f"TeacherSpec(name={self.name!r}, base_url={url!r}, transport={self.transport!r}, "
                f"tensor_parallel_size={self.tensor_parallel_size!r})")

    @property
    def backend(self) -> str:
        return self.name.partition(":")[0]

    @property
    def model(self) -> str:
        return self.name.partition(":")[2]

    def options(self) -> dict[str, object]:
        """The backend's keyword options (only those set)."""
        options: dict[str, object] = {}
        if self.base_url:
            options["base_url"] = self.base_url
        if self.transport:
            options["transport"] = self.transport
        if self.tensor_parallel_size:
            options["tensor_parallel_size"] = self.tensor_parallel_size
        return options
