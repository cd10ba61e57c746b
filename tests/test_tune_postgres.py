"""Two `cnnlab tune` processes share one study through a real PostgreSQL server.

The `postgres_url` fixture (tests/conftest.py) makes a throw-away cluster with Debian's PostgreSQL 15,
listening on 127.0.0.1 and a free port with a password; it is stopped and removed afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_tune import tiny_study, trials_csv, write

from conftest import PG_PASSWORD as PASSWORD
from conftest import REPO, needs_data


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
