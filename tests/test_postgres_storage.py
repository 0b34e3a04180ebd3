"""Two worker processes share one Optuna study through a real PostgreSQL server.

Proves the server (``postgres_url`` fixture), the psycopg2 driver and Optuna's RDB
storage work across processes. Each worker runs a fixed ``n_trials``: a
MaxTrialsCallback stops a worker only after its own trial ends, so with two workers
in flight the total could overshoot 20; fixed per-worker counts make it exactly 20.
"""

import subprocess
import sys
import uuid

import optuna

N_WORKERS = 2
TRIALS_EACH = 10

WORKER = """
import os, sys, time
import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = optuna.load_study(study_name=name, storage=url)

def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    x = trial.suggest_float("x", -10.0, 10.0)
    time.sleep(0.02)  # let the two workers interleave
    return (x - 2.0) ** 2

study.optimize(objective, n_trials=n)
print(os.getpid())
"""


def test_two_workers_share_a_postgres_study(postgres_url):
    name = f"pg-two-workers-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=postgres_url, study_name=name, load_if_exists=True)

    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, postgres_url, name, str(TRIALS_EACH)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(N_WORKERS)
    ]
    pids = set()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        pids.add(int(out.split()[-1]))

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == len(complete) == N_WORKERS * TRIALS_EACH == 20
    assert sorted(t.number for t in trials) == list(range(20))  # numbering shared, no gaps
    by_pid = {}
    for t in complete:
        by_pid[t.user_attrs["pid"]] = by_pid.get(t.user_attrs["pid"], 0) + 1
    assert set(by_pid) == pids and len(pids) == N_WORKERS  # both workers contributed
    assert all(n == TRIALS_EACH for n in by_pid.values())
    assert study.best_value >= 0.0
    optuna.delete_study(study_name=name, storage=postgres_url)
