"""One worker of a multi-worker test run: ``python _distributed_worker.py JOB.json``.

The job names the cluster (``workers``, ``index``), the recipe (or ``resume``), ``out``, where to save this
worker's final weights (``weights``, an ``.npz``) and, to simulate a crash, ``die_at_epoch`` (this worker
ends with ``os._exit`` when that global epoch begins). Exit status 0 on success, 1 on a lost worker.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    from ftkit import distribute

    distribute.use_workers(job["workers"], job["index"])

    import keras
    import numpy as np
    from _training_helpers import register_tiny

    from ftkit.training import train

    register_tiny()
    callbacks = []
    if job.get("die_at_epoch") is not None:
        class Die(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == job["die_at_epoch"]:
                    os._exit(9)  # a crash: no clean-up, no goodbye to the other workers

        callbacks.append(Die())
    try:
        result = train(job.get("recipe"), out=job.get("out"), resume=job.get("resume"), strategy="multi_worker",
                       join_timeout=job.get("join_timeout", 60), callbacks=callbacks, log=print)
    except distribute.WorkerLostError as exc:
        print(f"WORKER LOST: {exc}", flush=True)
        os._exit(1)  # as the CLI does: a normal exit waits at the shutdown barrier for the dead worker
    np.savez(job["weights"], *result.model.get_weights())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
