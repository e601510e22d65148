"""launch/sweep.py: run names, local and TPU commands, the local runner (with a stand-in for
the trainer that writes metrics files), and the table collected from those files."""

import json
import sys
import textwrap

import pytest

from launch import sweep
from launch import tpu

CONFIG = '''
import ml_collections

def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.lr = 0.1
  config.total_steps = 10
  config.loss_weights = dict(pair=1.0, text=1.0)
  return config

def sweep():
  yield {}
  yield {"lr": 0.5}
  yield {"lr": 0.5, "loss_weights.pair": 0.0}
'''
# Stands in for `python -m cpllm.main`: notes its arguments, fails for lr 0.5 without the
# pairwise loss, otherwise writes the last evaluation with srcc = lr.
TRAIN = '''
import json, os, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
with open(os.path.join(os.path.dirname(__file__), "calls.txt"), "a") as f:
  f.write(" ".join(sys.argv[1:]) + "\\n")
if args.get("config.loss_weights.pair") == "0.0":
  sys.exit(1)
step = args["config.total_steps"]
os.makedirs(os.path.join(args["workdir"], "eval", step))
with open(os.path.join(args["workdir"], "eval", step, "metrics.json"), "w") as f:
  json.dump({"step": int(step), "srcc": float(args.get("config.lr", 0.1)), "plcc": 0.25,
             "flip_rate": {"4": 0.125, "10": None}}, f)
'''
HEADER = ("run,lr,loss_weights.pair,step,srcc,plcc,krcc,rmse,flip_rate 2,flip_rate 4,"
          "flip_rate 10,flip_rate 20,text_level_accuracy")


@pytest.fixture
def config(tmp_path):
  (tmp_path / "sweep_config.py").write_text(CONFIG)
  return str(tmp_path / "sweep_config.py")


def test_demo_sweep_runs_and_local_commands(tmp_path, capsys):
  names = [run.name for run in sweep.runs("configs/demo.py:smoke")]
  assert names == ["base", "lr=0.0003", "lr=0.003", "loss_weights.pair=0.0",
                   "loss_weights.text=0.0"]
  work = tmp_path / "sweep"
  sweep.main(["--config=configs/demo.py:smoke", f"--workdir={work}", "--dry-run",
              "--config.data.data_dir=runs/data"])
  py = f"{sys.executable} -m cpllm.main --config=configs/demo.py:smoke"
  data = "--config.data.data_dir=runs/data"
  assert capsys.readouterr().out.splitlines() == [
      f"=== base: {py} --workdir={work}/base {data}",
      f"=== lr=0.0003: {py} --workdir={work}/lr=0.0003 {data} --config.lr=0.0003",
      f"=== lr=0.003: {py} --workdir={work}/lr=0.003 {data} --config.lr=0.003",
      f"=== loss_weights.pair=0.0: {py} --workdir={work}/loss_weights.pair=0.0 {data} "
      "--config.loss_weights.pair=0.0",
      f"=== loss_weights.text=0.0: {py} --workdir={work}/loss_weights.text=0.0 {data} "
      "--config.loss_weights.text=0.0"]
  assert not work.exists()  # a dry run writes nothing


def test_tpu_commands_for_a_v4_32_pod(config, capsys, monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # no gcloud; a dry run must not need one
  sweep.main([f"--config={config}", "--workdir=gs://b/sweeps/s", "--tpu", "--name=cpllm-v4",
              "--zone=us-central2-b", "--accelerator-type=v4-32", "--dry-run",
              "--config.total_steps=4"])
  ssh = "gcloud compute tpus tpu-vm ssh cpllm-v4 --zone=us-central2-b --worker=all"
  train = (f"~/cpllm-venv/bin/python -m cpllm.main --config={config} --workdir=gs://b/sweeps/s")
  assert capsys.readouterr().out.splitlines() == [
      f"=== {name}: {ssh} '--command=set -o pipefail; cd ~/cpllm && {train}/{name} "
      f"--config.distributed=True --config.total_steps=4{args} 2>&1 | tee ~/cpllm_{name}.log'"
      for name, args in [("base", ""), ("lr=0.5", " --config.lr=0.5"),
                         ("lr=0.5,loss_weights.pair=0.0",
                          " --config.lr=0.5 --config.loss_weights.pair=0.0")]]


def test_local_runner_trains_each_run_once_and_collects_the_table(config, tmp_path, capsys,
                                                                  monkeypatch):
  (tmp_path / "train.py").write_text(TRAIN)
  monkeypatch.setattr(sweep, "TRAIN", (sys.executable, str(tmp_path / "train.py")))
  work = tmp_path / "sweep"
  argv = [f"--config={config}", f"--workdir={work}", "--config.total_steps=4"]
  with pytest.raises(SystemExit, match="failed runs: lr=0.5,loss_weights.pair=0.0"):
    sweep.main(argv)  # the failed run does not stop the table
  expected_csv = textwrap.dedent(f"""\
      {HEADER}
      base,,,4,0.1,0.25,,,,0.125,,,
      lr=0.5,0.5,,4,0.5,0.25,,,,0.125,,,
      "lr=0.5,loss_weights.pair=0.0",0.5,0.0,,,,,,,,,,
      """)
  expected_md = textwrap.dedent("""\
      | run | lr | loss_weights.pair | step | srcc | plcc | krcc | rmse | flip_rate 2 | flip_rate 4 | flip_rate 10 | flip_rate 20 | text_level_accuracy |
      |---|---|---|---|---|---|---|---|---|---|---|---|---|
      | base |  |  | 4 | 0.100 | 0.250 | n/a | n/a | n/a | 0.125 | n/a | n/a | n/a |
      | lr=0.5 | 0.5 |  | 4 | 0.500 | 0.250 | n/a | n/a | n/a | 0.125 | n/a | n/a | n/a |
      | lr=0.5,loss_weights.pair=0.0 | 0.5 | 0.0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |
      """)  # noqa: E501
  assert (work / "table.csv").read_text() == expected_csv
  assert (work / "table.md").read_text() == expected_md
  calls = (tmp_path / "calls.txt").read_text().splitlines()
  assert calls == [f"--config={config} --workdir={work}/{name} --config.total_steps=4{args}"
                   for name, args in [("base", ""), ("lr=0.5", " --config.lr=0.5"),
                                      ("lr=0.5,loss_weights.pair=0.0",
                                       " --config.lr=0.5 --config.loss_weights.pair=0.0")]]
  # Again: the finished runs (evaluated at total_steps, 4 here, not the config's 10) are
  # skipped, the failed one retried.
  capsys.readouterr()
  with pytest.raises(SystemExit):
    sweep.main(argv)
  assert capsys.readouterr().out.splitlines()[:2] == ["=== base: finished",
                                                      "=== lr=0.5: finished"]
  assert len((tmp_path / "calls.txt").read_text().splitlines()) == 4


def test_final_metrics_are_the_last_evaluation_and_misspelt_keys_fail(tmp_path, config):
  for step in (300, 1000):
    (tmp_path / "run" / "eval" / str(step)).mkdir(parents=True)
    (tmp_path / "run" / "eval" / str(step) / "metrics.json").write_text(
        json.dumps({"step": step}))
  (tmp_path / "run" / "eval" / "2000").mkdir()  # being written: no metrics.json yet
  assert sweep.final_metrics(str(tmp_path / "run")) == {"step": 1000}
  assert sweep.final_metrics(str(tmp_path / "none")) == {}
  assert sweep.load(config, ["--config.lr=0.5"]).lr == 0.5
  with pytest.raises(AttributeError, match="Did you mean"):
    sweep.load(config, ["--config.lrr=0.5"])
  pod = tpu.Pod("x", "z")
  with pytest.raises(AttributeError):
    sweep.tpu_commands(pod, config, "gs://b/s", [sweep.Run("r", {"lrr": 1})])


def test_run_names():
  assert sweep.run_name({}) == "base"
  assert sweep.run_name({"lr": 3e-4, "mesh": (1, -1, 1), "tokenizer": "a b/c"}) == (
      "lr=0.0003,mesh=1,-1,1,tokenizer=abc")
