"""Cloud TPU VM pods: create, copy the code, set up, run a config on every worker, logs, delete.

  python -m launch.tpu create --name=cpllm --zone=us-west4-a --accelerator-type=v5litepod-16
  python -m launch.tpu copy   --name=cpllm --zone=us-west4-a
  python -m launch.tpu setup  --name=cpllm --zone=us-west4-a [--fetch=gs://B/ckpt/x.npz ...]
  python -m launch.tpu run    --name=cpllm --zone=us-west4-a --config=configs/paper.py \
      --workdir=gs://B/runs/paper --config.data.data_dir=gs://B/tfds [--config.key=value ...]
  python -m launch.tpu logs   --name=cpllm --zone=us-west4-a [--worker=0]
  python -m launch.tpu stop   --name=cpllm --zone=us-west4-a
  python -m launch.tpu delete --name=cpllm --zone=us-west4-a

Every subcommand takes `--dry-run`: it prints the exact commands, shell-quoted, and runs
nothing. `create --spot` asks for Spot capacity, `--queued` goes through a queued resource
of the same name (then `delete` needs `--queued` too). Each worker of a pod runs the same
command (`--worker=all`); the trainer joins them with `--config.distributed=True`.
Commands are built as argument lists by the pure functions below, so tests check them
without a gcloud binary.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Paths on every worker, relative to the ssh user's home (the remote shell expands ~).
CODE_DIR = "~/cpllm"
VENV = "~/cpllm-venv"
FETCH_DIR = "ckpt"  # under CODE_DIR, so a run (started there) reaches it as ckpt/<file>
LOG = "cpllm.log"

# Runtime (software) versions for JAX by TPU generation, from the Cloud TPU docs' "TPU
# software versions" table; v4 and older share the plain Ubuntu image.
RUNTIMES = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5",
            "v5litepod": "v2-alpha-tpuv5-lite", "v4": "tpu-ubuntu2204-base",
            "v3": "tpu-ubuntu2204-base", "v2": "tpu-ubuntu2204-base"}


@dataclasses.dataclass(frozen=True)
class Pod:
  """A TPU VM (one or more workers) and how to ask for it."""
  name: str
  zone: str
  accelerator_type: str = "v5litepod-16"
  version: str | None = None  # runtime version; None: RUNTIMES of the generation
  project: str | None = None  # None: gcloud's configured project
  spot: bool = False
  queued: bool = False  # created through a queued resource named `name`
  valid_until: str | None = None  # queued only: give up waiting after e.g. '6h'

  @property
  def runtime_version(self) -> str:
    if self.version:
      return self.version
    generation = self.accelerator_type.rsplit("-", 1)[0]
    if generation not in RUNTIMES:
      raise ValueError(f"no default runtime version for {self.accelerator_type!r}; "
                       f"pass --version (known: {sorted(RUNTIMES)})")
    return RUNTIMES[generation]

  def location(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


def create(pod: Pod) -> list[str]:
  if pod.queued:
    command = ["gcloud", "compute", "tpus", "queued-resources", "create", pod.name,
               f"--node-id={pod.name}", *pod.location(),
               f"--accelerator-type={pod.accelerator_type}",
               f"--runtime-version={pod.runtime_version}"]
    if pod.valid_until:
      command.append(f"--valid-until-duration={pod.valid_until}")
  else:
    if pod.valid_until:
      raise ValueError("--valid-until only applies to a queued resource (--queued)")
    command = ["gcloud", "compute", "tpus", "tpu-vm", "create", pod.name, *pod.location(),
               f"--accelerator-type={pod.accelerator_type}",
               f"--version={pod.runtime_version}"]
  return command + (["--spot"] if pod.spot else [])


def describe_queued(pod: Pod) -> list[str]:
  """Prints the queued resource's state (WAITING_FOR_RESOURCES, ..., ACTIVE)."""
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", pod.name,
          *pod.location(), "--format=value(state.state)"]


def delete(pod: Pod) -> list[str]:
  if pod.queued:  # --force deletes the TPU VM with its queued resource
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", pod.name,
            *pod.location(), "--force", "--quiet"]
  return ["gcloud", "compute", "tpus", "tpu-vm", "delete", pod.name, *pod.location(),
          "--quiet"]


def ssh(pod: Pod, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", pod.name, *pod.location(),
          f"--worker={worker}", f"--command={command}"]


def copy(pod: Pod, ref: str = "HEAD", repo: pathlib.Path = REPO_ROOT) -> list[list[str]]:
  """The commit `ref` of the checkout, unpacked into CODE_DIR on every worker.

  An archive of a commit (not the working tree) carries no .venv/ or runs/ and says exactly
  which code ran; `--ref=$(git stash create)` ships uncommitted changes of tracked files.
  It unpacks over the old tree, so fetched files (setup --fetch) stay.
  """
  archive = f"/tmp/cpllm-{pod.name}.tar.gz"
  return [["git", "-C", str(repo), "archive", "--format=tar.gz", f"--output={archive}", ref],
          ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{pod.name}:cpllm.tar.gz",
           *pod.location(), "--worker=all"],
          ssh(pod, f"mkdir -p {CODE_DIR} && tar -xzf ~/cpllm.tar.gz -C {CODE_DIR}")]


def pull(pod: Pod, url: str, ref: str = "main") -> list[str]:
  """Clones `url` into CODE_DIR on every worker (or fetches into it) and checks out `ref`."""
  url, ref = shlex.quote(url), shlex.quote(ref)
  return ssh(pod, f"(test -d {CODE_DIR}/.git || git clone {url} {CODE_DIR}) && "
                  f"git -C {CODE_DIR} fetch {url} {ref} && git -C {CODE_DIR} checkout FETCH_HEAD")


def pinned_jax(requirements: pathlib.Path = REPO_ROOT / "requirements.txt") -> str:
  """The jax version requirements.txt pins, so libtpu is installed for that version."""
  match = re.search(r"^jax==(\S+)", requirements.read_text(), re.MULTILINE)
  if not match:
    raise ValueError(f"{requirements} pins no jax version")
  return match.group(1)


def setup(pod: Pod, python: str = "python3.11", fetch: tuple[str, ...] = ()) -> list[str]:
  """One virtual environment per worker with requirements.txt, the package and jax[tpu].

  The TPU images are Ubuntu 22.04 (Python 3.10); the pinned stack needs 3.11, hence the
  apt install. `fetch` copies gs:// files (checkpoints) to CODE_DIR/ckpt/ on every worker:
  the checkpoint loaders read local files.
  """
  steps = ["set -e",
           "sudo apt-get update -q",
           f"sudo apt-get install -y -q {python} {python}-venv",
           f"{python} -m venv {VENV}",
           f"{VENV}/bin/pip install -q --upgrade pip",
           f"cd {CODE_DIR}",
           f"{VENV}/bin/pip install -q -r requirements.txt",
           f"{VENV}/bin/pip install -q --no-deps -e .",
           f'{VENV}/bin/pip install -q "jax[tpu]=={pinned_jax()}"']
  if fetch:
    steps += [f"mkdir -p {FETCH_DIR}",
              "gcloud storage cp " + " ".join(map(shlex.quote, fetch)) + f" {FETCH_DIR}/"]
  return ssh(pod, "; ".join(steps))


def train_command(config: str, workdir: str, overrides: tuple[str, ...] = ()) -> list[str]:
  """The training command every worker runs (in CODE_DIR, with VENV's python)."""
  return ["python", "-m", "cpllm.main", f"--config={config}", f"--workdir={workdir}",
          "--config.distributed=True", *overrides]


def run(pod: Pod, config: str, workdir: str, overrides: tuple[str, ...] = (),
        log: str = LOG, foreground: bool = False) -> list[str]:
  """Starts `config` on every worker, output to ~/<log> on each.

  In the background (nohup, every descriptor redirected, so ssh returns at once and a
  dropped connection does not stop training); `foreground` keeps ssh attached until every
  worker finishes (the sweep runs one configuration after another that way).
  """
  train = f"{VENV}/bin/" + shlex.join(train_command(config, workdir, overrides))
  if foreground:
    command = f"set -o pipefail; cd {CODE_DIR} && {train} 2>&1 | tee ~/{shlex.quote(log)}"
  else:
    command = f"cd {CODE_DIR} && nohup {train} > ~/{shlex.quote(log)} 2>&1 < /dev/null &"
  return ssh(pod, command)


def logs(pod: Pod, worker: str = "0", log: str = LOG, lines: int = 100) -> list[str]:
  return ssh(pod, f"tail -n {lines} -F ~/{shlex.quote(log)}", worker=worker)


def stop(pod: Pod) -> list[str]:
  """Ends the training processes on every worker (before a new run, or after one crashed)."""
  # '[c]' keeps the pattern from matching the remote shell running this very command.
  return ssh(pod, 'pkill -f "[c]pllm[.]main" || true')


def call(command: list[str]) -> int:
  """Runs `command`, returns its exit status; a missing program ends with a clear error."""
  try:
    return subprocess.run(command).returncode
  except FileNotFoundError:
    hint = " (install the Google Cloud CLI)" if command[0] == "gcloud" else ""
    sys.exit(f"{command[0]} not found on PATH{hint}; could not run: {shlex.join(command)}")


def execute(commands: list[list[str]], dry_run: bool) -> None:
  """Prints each command shell-quoted; without `dry_run` also runs it, stopping at a failure."""
  for command in commands:
    print(shlex.join(command), flush=True)
    if not dry_run and (returncode := call(command)):
      sys.exit(f"exit status {returncode} from: {shlex.join(command)}")


def wait_until_active(pod: Pod, seconds: float = 30) -> None:
  """Polls a queued resource until it is ACTIVE; stops at FAILED or SUSPENDED."""
  while True:
    try:
      state = subprocess.run(describe_queued(pod), capture_output=True, text=True,
                             check=True).stdout.strip()
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
      sys.exit(f"could not run {shlex.join(describe_queued(pod))}: {e}")
    print(f"{pod.name}: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      sys.exit(f"queued resource {pod.name} is {state}")
    time.sleep(seconds)


def add_pod_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
  parser.add_argument("--name", required=required, help="TPU VM (and queued resource) name.")
  parser.add_argument("--zone", required=required)
  parser.add_argument("--project", help="Default: gcloud's configured project.")
  parser.add_argument("--accelerator-type", default="v5litepod-16",
                      help="e.g. v5litepod-16, v4-32.")
  parser.add_argument("--version", help="Runtime version (default by TPU generation).")
  parser.add_argument("--spot", action="store_true", help="Spot capacity (create).")
  parser.add_argument("--queued", action="store_true",
                      help="Through a queued resource (create, delete).")
  parser.add_argument("--valid-until", help="Queued: stop waiting after this, e.g. 6h.")


def pod_from_flags(args: argparse.Namespace) -> Pod:
  return Pod(name=args.name, zone=args.zone, accelerator_type=args.accelerator_type,
             version=args.version, project=args.project, spot=args.spot, queued=args.queued,
             valid_until=args.valid_until)


def config_overrides(extra: list[str], parser: argparse.ArgumentParser) -> tuple[str, ...]:
  """The `--config.key=value` arguments argparse left over; anything else is an error."""
  unknown = [arg for arg in extra if not arg.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  return tuple(extra)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m launch.tpu", allow_abbrev=False,
                                   description=__doc__.split("\n")[0])
  subparsers = parser.add_subparsers(dest="action", required=True)
  sub = {action: subparsers.add_parser(action, allow_abbrev=False) for action in
         ("create", "copy", "pull", "setup", "run", "logs", "stop", "delete")}
  for action_parser in sub.values():
    add_pod_flags(action_parser)
    action_parser.add_argument("--dry-run", action="store_true", help="Print the commands only.")
  sub["copy"].add_argument("--ref", default="HEAD", help="Commit to copy.")
  sub["pull"].add_argument("--url", required=True, help="Git repository to clone.")
  sub["pull"].add_argument("--ref", default="main", help="Branch, tag or commit.")
  sub["setup"].add_argument("--python", default="python3.11")
  sub["setup"].add_argument("--fetch", action="append", default=[],
                            help="gs:// file copied to ~/cpllm/ckpt/ on every worker.")
  sub["run"].add_argument("--config", required=True, help="configs/<name>.py[:arg]")
  sub["run"].add_argument("--workdir", required=True, help="gs://bucket/path")
  sub["run"].add_argument("--log", default=LOG, help="Log file in each worker's home.")
  sub["run"].add_argument("--foreground", action="store_true",
                          help="Wait for the run to finish, its output streamed here.")
  sub["logs"].add_argument("--worker", default="0", help="Worker number, or 'all'.")
  sub["logs"].add_argument("--log", default=LOG)
  sub["logs"].add_argument("--lines", type=int, default=100)
  args, extra = parser.parse_known_args(argv)
  if extra and args.action != "run":  # only `run` takes config overrides
    sub[args.action].error(f"unrecognized arguments: {' '.join(extra)}")
  overrides = config_overrides(extra, sub[args.action])
  pod = pod_from_flags(args)
  commands = {
      "create": lambda: [create(pod)],
      "copy": lambda: copy(pod, args.ref),
      "pull": lambda: [pull(pod, args.url, args.ref)],
      "setup": lambda: [setup(pod, args.python, tuple(args.fetch))],
      "run": lambda: [run(pod, args.config, args.workdir, overrides, args.log,
                          args.foreground)],
      "logs": lambda: [logs(pod, args.worker, args.log, args.lines)],
      "stop": lambda: [stop(pod)],
      "delete": lambda: [delete(pod)],
  }[args.action]()
  execute(commands, args.dry_run)
  if args.action == "create" and pod.queued:
    if args.dry_run:  # what the real run repeats until the queued resource is ACTIVE
      print(shlex.join(describe_queued(pod)))
    else:
      wait_until_active(pod)


if __name__ == "__main__":
  main()
