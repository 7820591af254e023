"""kdforge's generator: records and shards, the request engine, teacher backends, methods and the `gen` CLI."""

__version__ = "0.1.0"
