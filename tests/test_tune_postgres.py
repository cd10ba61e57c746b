"""Two `cnnlab tune` processes share one study through a real PostgreSQL server.

The fixture makes a throw-away cluster with Debian's PostgreSQL 15 (`make test` installs the
package when it is missing): initdb and pg_ctl run as the `postgres` user (the tests run as root,
and PostgreSQL refuses to run as root) in a temporary folder that user owns, listening on
127.0.0.1 and a free port with a password; it is stopped and removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_tune import tiny_study, trials_csv, write

from conftest import REPO, free_port, needs_data

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "tune-secret-7"


def _as_postgres(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    command = [*argv] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)


@pytest.fixture
def postgres_url():
    if not (PG_BIN / "initdb").is_file():
        pytest.fail(f"{PG_BIN}/initdb not found: install Debian's postgresql package (make test-system)")
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))  # not under pytest's root-only tmp: postgres must enter
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(folder, user.pw_uid, user.pw_gid)
        (folder / "pw").write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(folder / "pw", user.pw_uid, user.pw_gid)
        data, port = folder / "data", free_port()
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "cnnlab", f"--pwfile={folder / 'pw'}",
                     "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync")
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60",
                     "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off", "start")
        try:
            yield f"postgresql+psycopg2://cnnlab:{PASSWORD}@127.0.0.1:{port}/postgres"
        finally:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@needs_data
def test_two_workers_share_one_postgres_study_and_run_no_trial_twice(postgres_url, tmp_path):
    import optuna

    data = tiny_study(trials=6)
    data["train"]["epochs"] = 3
    config = write(tmp_path / "tiny.yaml", data)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "cnnlab", "tune", str(config), "--storage", postgres_url, "--study", "shared",
               "--runs-dir", str(runs)]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
               for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
        assert PASSWORD not in output  # the URL is shown without its password
        assert "cnnlab:***@127.0.0.1" in output
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    log = "\n".join(outputs)
    # N trials between them, none failed; two workers that finish at the same instant may each start
    # one more (Optuna has no atomic "claim the last slot"), so at most one over
    assert len(finished) == len(trials) and 6 <= len(trials) <= 7, log
    count = len(trials)
    assert sorted(t.number for t in trials) == list(range(count)), log
    values = {(t.params["model.layers[1].units"], t.params["train.optimizer.learning_rate"]) for t in trials}
    assert len(values) == count, log  # no trial's values run twice
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2, log  # both worked on the study
    runs_made = sorted(p.name for p in (runs / "shared").glob("trial-*"))
    assert [name[:9] for name in runs_made] == [f"trial-{n:03d}" for n in range(count)], log  # one run each
    assert {Path(t.user_attrs["run"]["run_dir"]).name for t in trials} == set(runs_made)
    assert len(trials_csv(runs / "shared")) == count
