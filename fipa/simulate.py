"""One federated run from its config to final.json, and the names the run's modules export.

The run is split by concern (notes/structure.md): its directory before training
(fipa/rundir.py), its partition file (fipa/partition_file.py), its regime (federated or a
reference, fipa/reference.py), the prepared simulation (fipa/simulation.py), the client work
of a round (fipa/work.py), the round loop (fipa/loop.py) and what it records
(fipa/records.py). ``train`` runs (or resumes) one job; ``train_lockstep`` several in
lockstep (a batch job's cells).
"""

from __future__ import annotations

from fipa.checkpoint import load_warmup
from fipa.loop import STACK_WORK, RunLoop, finite_uploads, prepared, train, train_lockstep
from fipa.partition_file import load_partition
from fipa.records import final_record, versions
from fipa.reference import REFERENCES, centralized_client
from fipa.rundir import check_writable, finished_run, prepare_run_dir, supersede_stale_run
from fipa.simulation import Simulation, derive_seed, sample_clients
from fipa.work import ClientWork, round_updates, round_work, train_work

__all__ = [
    "REFERENCES", "STACK_WORK", "ClientWork", "RunLoop", "Simulation", "centralized_client", "check_writable",
    "derive_seed", "final_record", "finished_run", "finite_uploads", "load_partition", "load_warmup",
    "prepare_run_dir", "prepared", "round_updates", "round_work", "sample_clients", "supersede_stale_run",
    "train", "train_lockstep", "train_work", "versions",
]
