"""Test-wide environment: offline hub, caches in a temp dir. Set before any test module imports transformers."""

import os
import tempfile

_CACHE_ROOT = tempfile.mkdtemp(prefix="kdforge-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", os.path.join(_CACHE_ROOT, "hf"))
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE_ROOT, "hf-datasets"))
os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(_CACHE_ROOT, "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_CACHE_ROOT, "inductor"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded teacher's assembled GGUF is reused across the session (and across runs, keyed by the package version).
os.environ.setdefault("KDFORGE_CACHE", os.path.join(tempfile.gettempdir(), "kdforge-cache"))
