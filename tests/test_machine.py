"""The machine record of a training run (:mod:`glus.train.machine`): what it holds, and the warning when a resume
runs on other kernels than the steps before it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import glus.train.trainer as trainer_module
from glus.errors import GLUSError
from glus.train.machine import MACHINE_FILE, KERNEL_FIELDS, describe_machine, kernel_differences, read_machines
from glus.train.trainer import Trainer


def test_describe_machine_reads_this_process() -> None:
    machine = describe_machine()
    assert set(KERNEL_FIELDS) <= set(machine)
    assert machine["processor"] and machine["blas"]
    assert machine["torch"] == torch.__version__
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["threads"] == torch.get_num_threads()
    assert machine["cuda_device"] is None  # on the CPU


def test_kernel_differences_names_only_the_fields_that_decide_kernels() -> None:
    a = describe_machine()
    same_kernels = {**a, "python": "0.0.0"}  # another Python runs the same kernels
    assert kernel_differences(a, same_kernels) == []
    other = {**a, "processor": "Other CPU", "threads": a["threads"] + 1}
    assert kernel_differences(a, other) == [f"processor: {a['processor']} -> Other CPU",
                                            f"threads: {a['threads']} -> {a['threads'] + 1}"]


def test_a_resume_on_other_kernels_is_recorded_and_warned(tmp_path: Path, monkeypatch, caplog) -> None:
    run = SimpleNamespace(run_dir=tmp_path, device=torch.device("cpu"))
    Trainer._record_machine(run, 0)
    Trainer._record_machine(run, 5)  # the same machine: no warning
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    real = describe_machine()
    monkeypatch.setattr(trainer_module, "describe_machine",
                        lambda device: {**real, "cpu_capability": "SOMETHING ELSE"})
    with caplog.at_level(logging.WARNING):
        Trainer._record_machine(run, 9)
    machines = json.loads((tmp_path / MACHINE_FILE).read_text())["machines"]
    assert [m["from_step"] for m in machines] == [0, 5, 9]
    assert machines[2]["cpu_capability"] == "SOMETHING ELSE"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "step 5" in warned[0] and "cpu_capability" in warned[0]


def test_a_bad_record_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    assert read_machines(tmp_path / "absent.json") is None  # a model trained before the record existed
    for text in ("{not json", '{"machines": 3}', '{"machines": [{"processor": "x"}]}', "[1, 2]"):
        record = tmp_path / MACHINE_FILE
        record.write_text(text)
        with pytest.raises(GLUSError) as error:
            read_machines(record)
        assert str(record) in str(error.value) and "\n" not in str(error.value)
