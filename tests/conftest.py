"""Test-wide setup. XLA and JAX settings must be in the environment before jax is imported
anywhere; subprocesses that tests start inherit them (see `xla_flags`).

- 8 host devices, for the sharding and multi-process tests.
- `--xla_backend_optimization_level=0`: LLVM stops optimising the generated CPU code. The
  tests run tiny shapes, where compiling costs far more than running; the generated code
  computes the same values (XLA's own HLO passes still run, and no fast-math is enabled).
- `--xla_cpu_use_fusion_emitters=false`: fused loops are emitted by XLA's older LLVM
  emitter instead of its MLIR one, which halves the compile time of a train step here
  (3.5 s -> 1.5 s for the tiny CP-LLM); the same fusions compute the same operations.
- One persistent compilation cache per test run, shared by the xdist workers and every
  subprocess: the end-to-end tests compile the same train, evaluation and scoring programs
  in several processes, and each is compiled once. Per run, not per checkout, so a test run
  never depends on what an earlier one left behind.
- `shared_dir`: one folder per test run that every xdist worker sees, where expensive
  session fixtures (the trained smoke workdir) are made once for all workers.
"""
import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid

OPTIMIZATION = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def xla_flags(device_count: int) -> str:
  """XLA_FLAGS for a subprocess with `device_count` host devices, the suite's other flags
  kept."""
  return f"--xla_force_host_platform_device_count={device_count} {OPTIMIZATION}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# xdist gives its workers one id per run; a plain pytest run makes its own.
_RUN = os.environ.setdefault("CPLLM_TEST_RUN", os.environ.get("PYTEST_XDIST_TESTRUNUID")
                             or uuid.uuid4().hex)
_ROOT = os.path.join(tempfile.gettempdir(), "cpllm-test", _RUN)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",  # a user's own cache is kept
                      os.path.join(_ROOT, "jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


@contextlib.contextmanager
def shared_dir(name: str):
  """Yields (path, made): the run-wide folder `name` and whether it was already made.

  Workers take it in turn (an exclusive file lock): the first finds made False, fills the
  folder and leaves; the others wait for it and find made True. A worker that fails while
  filling it removes it, so the next one tries again and sees the same error.
  """
  path = os.path.join(_ROOT, "shared", name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      made = os.path.exists(path + ".done")
      if not made:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
      try:
        yield path, made
      except BaseException:
        if not made:
          shutil.rmtree(path, ignore_errors=True)
        raise
      if not made:
        open(path + ".done", "w").close()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_sessionfinish(session):
  """The run's compilation cache and shared fixtures go with the run (the xdist controller
  removes them after its workers have finished)."""
  if not hasattr(session.config, "workerinput"):
    shutil.rmtree(_ROOT, ignore_errors=True)
