"""One run per job folder and name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tomomatch.errors import InputError
from tomomatch.locking import JobLock


def test_second_run_stops_with_one_line_and_release_frees(tmp_path):
    with JobLock(tmp_path, "job", "match"):
        owner = json.loads((tmp_path / "job.lock").read_text())
        assert owner["host"] == socket.gethostname() and owner["command"] == "match"
        with pytest.raises(InputError) as exc:
            JobLock(tmp_path, "job", "match").acquire()
        assert "\n" not in str(exc.value) and "owns this job" in str(exc.value) and exc.value.field == "lock"
        JobLock(tmp_path, "other", "match").acquire().release()  # another name is another job
    assert not (tmp_path / "job.lock").exists()
    JobLock(tmp_path, "job").acquire().release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "job.lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": time.time(), "command": "match"})
    )
    with JobLock(tmp_path, "job"):
        assert json.loads((tmp_path / "job.lock").read_text())["pid"] != dead.pid


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "job.lock").write_text(
        json.dumps({"pid": 1, "host": "elsewhere", "started": time.time(), "command": "batch"})
    )
    with pytest.raises(InputError, match="elsewhere"):
        JobLock(tmp_path, "job").acquire()
    assert (tmp_path / "job.lock").exists()


def test_simulate_refuses_a_folder_another_run_owns(tmp_path):
    from tomomatch.simulate import simulate

    with JobLock(tmp_path, "simulation", "simulate"):
        with pytest.raises(InputError, match="owns this job"):
            simulate("ci", tmp_path, n_particles=1)
    assert not (tmp_path / "simulation.lock").exists()
