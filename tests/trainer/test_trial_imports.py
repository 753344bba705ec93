"""A trial process imports what it uses: not DeepSpeed (and, through it, MLflow, pandas,
pyarrow and FastAPI: 2-4 s of every CPU trial) unless the trial runs under DeepSpeed.
``accelerate``'s ``unwrap_model`` imported it whenever it was installed."""

import json
import subprocess
import sys

from tests.trainer.test_train import _child_env, _config_data, _write_yaml

PROBE = """
import json, sys
from aam_search.trainer.config import load_trial_config
from aam_search.trainer.train import run_trial
result = run_trial(load_trial_config(sys.argv[1]), sys.argv[2])
print(json.dumps({"status": result["status"], "imported": sorted(m for m in ("deepspeed", "mlflow", "pandas")
                                                                  if m in sys.modules)}))
"""


def test_a_cpu_trial_does_not_import_deepspeed_or_mlflow(small_cache, tmp_path):
    # A rung at epoch 1 (no orchestrator: the wait ends at once) runs the rung evaluation's
    # unwrap too, then the final evaluation's and the checkpoint's.
    config = _write_yaml(tmp_path / "trial.yaml", _config_data(
        small_cache, optim={"epochs": 2}, eval={"rungs": [1], "rung_wait_s": 0.01}))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(config), str(tmp_path / "out")], capture_output=True,
                          text=True, env=_child_env(), timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"status": "completed", "imported": []}
