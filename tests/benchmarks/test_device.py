"""benchmarks/device.sh: it runs (``--cpu``, tiny sizes) and its table has every row; the table's arithmetic."""

import os
import pathlib
import subprocess

import pytest

from benchmarks import device

ROOT = pathlib.Path(__file__).parents[2]


def rows(table: str) -> dict[str, list[str]]:
  """The table's rows by measurement: ``{label: [unit, cells...]}``."""
  lines = [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header
  return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def result(platform: str, scale: float, errors: dict[str, str] | None = None) -> dict:
  values = {row.key: scale for row in device.ROWS} | {"theta_parameters": 84_536.0}
  return {"platform": platform, "device": platform, "jax": "0", "values": values, "errors": errors or {}}


@pytest.mark.slow
def test_device_script_runs_on_cpu(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path))
  run = subprocess.run(
    ["bash", "benchmarks/device.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert run.returncode == 0, run.stderr[-3000:]
  table = rows(run.stdout)
  labels = [row.label.format(theta="2.7k", **device.sizes(quick=True)) for row in device.ROWS]
  assert list(table) == labels, run.stdout
  for label, (_, cpu) in table.items():
    assert cpu != "failed", f"{label}: {run.stdout}\n{run.stderr[-3000:]}"
    assert float(cpu.rstrip("x").replace(",", "")) > 0
  assert (tmp_path / "device.md").read_text() in run.stdout
  assert (tmp_path / "device-cpu.json").exists()


def test_table_compares_each_row_with_the_cpu():
  size = device.sizes(quick=False)
  gpu = result("gpu", 2.0, errors={"train": "ModuleNotFoundError: No module named 'gin'"})
  del gpu["values"]["train_inner_per_s"], gpu["values"]["train_seconds"]
  table = device.table([result("cpu", 1.0), gpu], size)
  by_label = {label.split(",")[0]: cells for label, cells in rows(table).items()}
  assert by_label["UNF layer forward"] == ["ms", "1.00", "2.00", "0.50x"]  # a time: CPU / GPU
  assert by_label["UNF LOpt"][-1] == "2.00x"  # a rate: GPU / CPU
  assert by_label["UNF layer forward / Dense"][-1] == ""  # a ratio has no speed-up
  assert by_label["metatrain train"] == ["inner/s", "1", "failed", ""]
  assert "84.5k theta (transformer_lm UNF LOpt)" in table
  assert "gpu, train: ModuleNotFoundError" in table
