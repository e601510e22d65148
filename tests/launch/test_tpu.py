"""launch/tpu.py: the exact gcloud commands of --dry-run for a v5e-16 and a v4-32 pod, and
that nothing runs (no gcloud exists here; a fake subprocess.run would record any call)."""

import shlex
import subprocess

import pytest

from launch import tpu

V5E = ["--name=cpllm-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-16"]
V4 = ["--name=cpllm-v4", "--zone=us-central2-b", "--project=my-project",
      "--accelerator-type=v4-32"]
G = "gcloud compute tpus"


@pytest.fixture
def calls(monkeypatch, tmp_path):
  """Commands the code tried to run; PATH has no gcloud, so none could have."""
  monkeypatch.setenv("PATH", str(tmp_path))
  recorded = []
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: recorded.append(a) or 1 / 0)
  return recorded


def dry_run(capsys, *argv: str) -> list[str]:
  tpu.main([*argv, "--dry-run"])
  return capsys.readouterr().out.splitlines()


def test_v5e_16_lifecycle_dry_run(capsys, calls):
  lines = {action: dry_run(capsys, action, *V5E) for action in
           ("create", "copy", "setup", "logs", "stop", "delete")}
  loc = "--zone=us-west4-a"
  assert lines["create"] == [f"{G} tpu-vm create cpllm-v5e {loc} --accelerator-type="
                             "v5litepod-16 --version=v2-alpha-tpuv5-lite"]
  assert lines["copy"] == [
      f"git -C {tpu.REPO_ROOT} archive --format=tar.gz --output=/tmp/cpllm-cpllm-v5e.tar.gz "
      "HEAD",
      f"{G} tpu-vm scp /tmp/cpllm-cpllm-v5e.tar.gz cpllm-v5e:cpllm.tar.gz {loc} --worker=all",
      f"{G} tpu-vm ssh cpllm-v5e {loc} --worker=all "
      "'--command=mkdir -p ~/cpllm && tar -xzf ~/cpllm.tar.gz -C ~/cpllm'"]
  assert lines["setup"] == [
      f"{G} tpu-vm ssh cpllm-v5e {loc} --worker=all '--command=set -e; sudo apt-get update -q; "
      "sudo apt-get install -y -q python3.11 python3.11-venv; python3.11 -m venv ~/cpllm-venv; "
      "~/cpllm-venv/bin/pip install -q --upgrade pip; cd ~/cpllm; ~/cpllm-venv/bin/pip "
      "install -q -r requirements.txt; ~/cpllm-venv/bin/pip install -q --no-deps -e .; "
      "~/cpllm-venv/bin/pip install -q \"jax[tpu]==0.10.2\"'"]
  assert lines["logs"] == [f"{G} tpu-vm ssh cpllm-v5e {loc} --worker=0 "
                           "'--command=tail -n 100 -F ~/cpllm.log'"]
  assert lines["stop"] == [f"{G} tpu-vm ssh cpllm-v5e {loc} --worker=all "
                           "'--command=pkill -f \"[c]pllm[.]main\" || true'"]
  assert lines["delete"] == [f"{G} tpu-vm delete cpllm-v5e {loc} --quiet"]
  assert calls == []


def test_v5e_16_run_passes_gcs_paths_and_overrides_to_every_worker(capsys, calls):
  lines = dry_run(capsys, "run", *V5E, "--config=configs/paper.py",
                  "--workdir=gs://my-bucket/runs/paper", "--config.data.data_dir=gs://my-bucket/tfds",
                  "--config.tokenizer=ckpt/tokenizer.model")
  assert lines == [
      f"{G} tpu-vm ssh cpllm-v5e --zone=us-west4-a --worker=all '--command=cd ~/cpllm && nohup "
      "~/cpllm-venv/bin/python -m cpllm.main --config=configs/paper.py "
      "--workdir=gs://my-bucket/runs/paper --config.distributed=True "
      "--config.data.data_dir=gs://my-bucket/tfds --config.tokenizer=ckpt/tokenizer.model "
      "> ~/cpllm.log 2>&1 < /dev/null &'"]
  assert calls == []


def test_quoting_survives_two_shells(capsys, calls):
  """A value with spaces and quotes reaches the trainer's argv unchanged: the local shell
  takes the printed line apart, the worker's shell the --command."""
  value = "--config.tokenizer=my dir/it's.model"
  line, = dry_run(capsys, "run", *V5E, "--config=configs/paper.py", "--workdir=gs://b/r", value)
  command = shlex.split(line)
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cpllm-v5e"]
  remote = command[-1].removeprefix("--command=")
  argv = shlex.split(remote.split(" && nohup ", 1)[1].split(" > ", 1)[0])
  assert argv[-1] == value and argv[-2] == "--config.distributed=True"
  assert calls == []


def test_v4_32_spot_queued_resource_dry_run(capsys, calls):
  loc = "--zone=us-central2-b --project=my-project"
  assert dry_run(capsys, "create", *V4, "--spot", "--queued", "--valid-until=6h") == [
      f"{G} queued-resources create cpllm-v4 --node-id=cpllm-v4 {loc} --accelerator-type=v4-32 "
      "--runtime-version=tpu-ubuntu2204-base --valid-until-duration=6h --spot",
      f"{G} queued-resources describe cpllm-v4 {loc} '--format=value(state.state)'"]
  assert dry_run(capsys, "create", *V4, "--spot") == [
      f"{G} tpu-vm create cpllm-v4 {loc} --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base --spot"]
  assert dry_run(capsys, "delete", *V4, "--queued") == [
      f"{G} queued-resources delete cpllm-v4 {loc} --force --quiet"]
  assert dry_run(capsys, "setup", *V4, "--fetch=gs://b/ckpt/pt 224.npz")[0].endswith(
      "mkdir -p ckpt; gcloud storage cp '\"'\"'gs://b/ckpt/pt 224.npz'\"'\"' ckpt/'")
  assert dry_run(capsys, "logs", *V4, "--worker=3", "--log=sweep.log", "--lines=5") == [
      f"{G} tpu-vm ssh cpllm-v4 {loc} --worker=3 '--command=tail -n 5 -F ~/sweep.log'"]
  assert dry_run(capsys, "pull", *V4, "--url=https://example.com/cpllm.git", "--ref=v1") == [
      f"{G} tpu-vm ssh cpllm-v4 {loc} --worker=all '--command=(test -d ~/cpllm/.git || git "
      "clone https://example.com/cpllm.git ~/cpllm) && git -C ~/cpllm fetch "
      "https://example.com/cpllm.git v1 && git -C ~/cpllm checkout FETCH_HEAD'"]
  assert calls == []


def test_missing_gcloud_names_the_command(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no gcloud
  with pytest.raises(SystemExit, match=r"gcloud not found on PATH \(install the Google Cloud "
                     r"CLI\); could not run: gcloud compute tpus tpu-vm delete cpllm-v5e "
                     r"--zone=us-west4-a --quiet"):
    tpu.main(["delete", *V5E])


def test_bad_arguments_are_refused(capsys, calls):
  with pytest.raises(SystemExit):
    tpu.main(["logs", *V5E, "--config.lr=1", "--dry-run"])  # overrides only for `run`
  with pytest.raises(SystemExit):
    tpu.main(["run", *V5E, "--config=c.py", "--workdir=w", "--dry-run", "--bogus"])
  with pytest.raises(ValueError, match="no default runtime version"):
    tpu.create(tpu.Pod("x", "z", accelerator_type="v9-8"))
  with pytest.raises(ValueError, match="--valid-until only applies"):
    tpu.create(tpu.Pod("x", "z", valid_until="1h"))
  assert tpu.create(tpu.Pod("x", "z", "v9-8", version="custom"))[-1] == "--version=custom"
  assert calls == []
