"""Generation beyond one process: units of work run by Ray actors that each own a teacher.

    gen evol --rounds 4 --teacher openai:M --base-url http://a:8000/v1,http://b:8000/v1 --ray local --workers 4
    gen evol ... --ray ray://head:10001 --workers 16 --redis redis://cache:6379/0

- `units`: what a unit of work is (a slice of the input × a round, with a deterministic id) and how its outcome is
  committed exactly once (`UnitStore`).
- `cluster`: Ray itself: connect or start a local cluster, one `UnitWorker` actor per worker (each opens its own
  teacher and engine from the run's `TeacherSpec` and `EngineSpec`), dispatch units to idle actors, and redo the
  units of an actor that died on the others while Ray restarts it.
- `distributed`: `build_distributed_engine(teacher, engine, scale, cache_path)`, what a command builds instead of
  `gen.engine.engine.build_engine` when it runs on Ray.
- `request_units`: `DistributedEngine`, the engine's `run(requests)` spread over the actors — any method runs on Ray
  unchanged, its own logic (pools, admission, rounds) staying in the driver.
- `phase_units`: `RayPhases`, the executor of a method's rounds (`gen.methods.phases`) on the actors: each phase of
  a slice of a round is a unit, committed once with its rows (Evol-Instruct's rounds run this way).
- `redis_index`: Evol-Instruct's near-duplicate index shared in Redis, so that workers catch each other's
  near-copies before the answer is paid for.
"""
