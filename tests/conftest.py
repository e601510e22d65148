"""Test-wide setup. XLA and JAX settings must be in the environment before jax is imported
anywhere; subprocesses that tests start inherit them (see `xla_flags`).

- 8 host devices, for the sharding and multi-process tests.
- `--xla_backend_optimization_level=0`: LLVM stops optimising the generated CPU code. The
  tests run tiny shapes, where compiling costs far more than running; the generated code
  computes the same values (XLA's own HLO passes still run, and no fast-math is enabled).
- One persistent compilation cache per test run, shared by the xdist workers and every
  subprocess: the end-to-end tests compile the same train, evaluation and scoring programs
  in several processes, and each is compiled once. Per run, not per checkout, so a test run
  never depends on what an earlier one left behind.
"""
import os
import shutil
import tempfile
import uuid

OPTIMIZATION = "--xla_backend_optimization_level=0"


def xla_flags(device_count: int) -> str:
  """XLA_FLAGS for a subprocess with `device_count` host devices, the suite's other flags
  kept."""
  return f"--xla_force_host_platform_device_count={device_count} {OPTIMIZATION}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# xdist gives its workers one id per run; a plain pytest run makes its own.
_RUN = os.environ.setdefault("CPLLM_TEST_RUN", os.environ.get("PYTEST_XDIST_TESTRUNUID")
                             or uuid.uuid4().hex)
_CACHE = os.path.join(tempfile.gettempdir(), "cpllm-test-jax-cache", _RUN)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # a user's own cache is kept
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_sessionfinish(session):
  """The run's compilation cache goes with the run (the xdist controller removes it after
  its workers have finished)."""
  if not hasattr(session.config, "workerinput"):
    shutil.rmtree(_CACHE, ignore_errors=True)
