#!/usr/bin/env bash
# The workflow on a real single-node SLURM, through profiles/slurm.
#
#   tests/cluster/run_slurm_test.sh        bring SLURM up, run the checks below, stop it
#   tests/cluster/run_slurm_test.sh up     only bring SLURM up (debugging; then `down`)
#   tests/cluster/run_slurm_test.sh down   stop what an earlier `up` started
#
# Needs root on Debian/Ubuntu; installs slurmctld, slurmd, slurm-client and munge with
# apt-get when they are missing. The daemons (a private munged, slurmctld, slurmd) are
# started directly, without systemd, with state, logs and PID files under $STATE; the
# cluster's config goes to /etc/slurm/slurm.conf and gres.conf (the executor's job steps drop
# $SLURM_CONF, so clients inside jobs only find the default path) and is removed again. The
# node declares two stand-in GPUs (Gres=gpu:2): device files made under $STATE/dev for the
# test (like /dev/null) and removed with it.
# Only the PIDs recorded under $STATE are stopped. Exit status: 0 all checks passed,
# 1 a check failed, 77 this machine cannot host the test (not root, no SLURM packages,
# a foreign SLURM config, a port in use).
#
# Checks, on the .test configuration (copies under $STATE/work, run with --directory):
#   - no partition while the cluster has no default one, or an unknown partition: the
#     run stops before any job, with a message naming the fix;
#   - the workflow runs to results/summary.csv through profiles/slurm: every non-local
#     job is a SLURM job (squeue's record of the run's job name: all COMPLETED), the six
#     training cells run in one batch job (rule train_batch), and job status comes from squeue
#     (sacct does not work on this cluster: no accounting database);
#   - meanwhile a job that fails on the cluster (a label-skew split of a task without labels,
#     which only `fipa partition` can see; the DAG-time check validates keys and ranges, not the
#     data) is reported FAILED, with the reason
#     in the rule's log, and the rerun after fixing the config completes;
#   - meanwhile the GPU case (tests/cluster/gpu_config.yaml, device: auto, FIPA_SLURM_GPUS=2,
#     FIPA_FAKE_CUDA=1 so that the jobs compute on the CPU): both training jobs are submitted
#     with --gpus=1 and run at once, each on its own stand-in GPU (distinct
#     CUDA_VISIBLE_DEVICES, bound by SLURM, no lock: their claim/release times in the rule logs
#     overlap);
#   - meanwhile the progress case (tests/cluster/cells_config.yaml): 12 short cells in one bundle
#     job (bundle_s), 2 long cells in one job each; `fipa status` during the run shows running
#     cells; the SLURM job of a long cell is cancelled while it trains; the submitting
#     Snakemake's output holds the 13 status lines of the other cells; `fipa status` after the
#     run names the cancelled cell failed, and after the rerun (which resumes it) all 14 done;
#   - summary.csv equals, in every ID and metric column, the one of a local run
#     (profiles/local) of the same config (both configs).
# Every snakemake call runs under `timeout -s KILL`; about 7 minutes on 2 busy cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${FIPA_BIN:-$ROOT/.venv/bin}
STATE=${FIPA_SLURM_STATE:-/tmp/fipa-slurm-test}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by fipa tests/cluster/run_slurm_test.sh"
CTLD_PORT=${FIPA_SLURMCTLD_PORT:-16817}
SLURMD_PORT=$((CTLD_PORT + 1))
NODE=$(hostname -s)
PARTITION=debug
T0=$(date +%s)
export PATH=$PATH:/usr/sbin:/sbin

log() { printf '[cluster-test %3ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
cannot() { log "SKIP: $*"; exit 77; }
fail() { log "FAIL: $*"; exit 1; }

# --- bring-up and tear-down -------------------------------------------------------------

stop_pid() {  # stop_pid NAME PIDFILE: TERM, then KILL after 10 s, the PID recorded there
    local name=$1 file=$2 pid
    [[ -s $file ]] || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    # only a live process of the expected program (the PID may have been reused)
    if [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

down() {
    if [[ -s $STATE/slurmctld.pid ]] && command -v scancel >/dev/null; then
        # every job on this private cluster is the test's own; let slurmd end their steps
        timeout -s KILL 20 scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z $(timeout -s KILL 10 squeue -h -t PD,R,CG 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_pid slurmd "$STATE/slurmd.pid"
    stop_pid slurmctld "$STATE/slurmctld.pid"
    stop_pid munged "$STATE/munge/munged.pid"
    for f in "$CONF" "$GRES_CONF"; do
        if [[ -f $f ]] && head -1 "$f" | grep -qF "$MARK"; then rm -f "$f"; fi
    done
    rm -rf "$STATE/dev"  # the stand-in GPUs' device files
}

install_slurm() {
    local missing=()
    for exe in slurmctld slurmd sbatch squeue munged mungekey; do
        command -v "$exe" >/dev/null || missing+=("$exe")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || cannot "SLURM is not installed (${missing[*]}) and there is no apt-get"
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    { timeout -s KILL 180 apt-get -o Acquire::http::Timeout=20 update -qq &&
        DEBIAN_FRONTEND=noninteractive timeout -s KILL 300 apt-get install -y -qq \
            --no-install-recommends slurmctld slurmd slurm-client munge; } \
        >"$STATE/apt.log" 2>&1 || cannot "apt-get could not install SLURM (see $STATE/apt.log)"
}

port_free() {  # nothing listens on port $1 (TIME_WAIT leftovers of an earlier run are fine)
    "$BIN/python" - "$1" 2>/dev/null <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
PY
}

up() {
    [[ $(id -u) == 0 ]] || cannot "needs root (daemons, /etc/slurm/slurm.conf)"
    mkdir -p "$STATE"
    down  # leftovers of an earlier run that was killed before its own tear-down
    for f in "$CONF" "$GRES_CONF"; do
        [[ ! -e $f ]] || cannot "$f exists and is not this test's; not touching a configured SLURM"
    done
    install_slurm
    for port in "$CTLD_PORT" "$SLURMD_PORT"; do
        port_free "$port" || cannot "port $port is in use (set FIPA_SLURMCTLD_PORT)"
    done
    rm -rf "$STATE/munge" "$STATE/state" "$STATE/spool" "$STATE/log"
    mkdir -p "$STATE/munge" "$STATE/state" "$STATE/spool" "$STATE/log" /etc/slurm
    chmod 755 "$STATE" "$STATE/munge"  # munged wants its socket's directory reachable

    # munge: a private key and daemon; slurm.conf points SLURM at its socket
    mungekey --create --keyfile="$STATE/munge/munge.key" >/dev/null
    munged --foreground --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
        --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" >"$STATE/log/munged.out" 2>&1 9>&- &
    echo $! >"$STATE/munge/munged.pid"
    for _ in $(seq 50); do [[ -S $STATE/munge/munge.socket ]] && break; sleep 0.1; done
    munge -S "$STATE/munge/munge.socket" -n | unmunge -S "$STATE/munge/munge.socket" >/dev/null \
        || fail "munged did not come up: $(tail -3 "$STATE/log/munged.out")"

    # two stand-in GPUs: device files (like /dev/null) that SLURM hands out as gres/gpu
    mkdir -p "$STATE/dev"
    for i in 0 1; do
        mknod -m 666 "$STATE/dev/fakegpu$i" c 1 3 2>/dev/null || touch "$STATE/dev/fakegpu$i"
    done
    printf '%s\n%s\n' "$MARK" "NodeName=$NODE Name=gpu File=$STATE/dev/fakegpu[0-1]" >"$GRES_CONF"

    local mem
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$CONF" <<EOF
$MARK
# A single-node cluster for the workflow test; removed when the test ends.
ClusterName=fipatest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# no accounting database: sacct does not work, job status comes from squeue
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=300
ReturnToService=2
# four times the cores: the test's jobs mostly wait on Python start-up, and three runs share the
# node (the main run, the GPU case and the progress case); with twice the cores the progress
# case's jobs could take the slots that the GPU case's two jobs need at once, and the GPU check
# failed on a 2-core CI machine (config_overrides: slurmd reports these values)
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$((4 * $(nproc))) RealMemory=$mem Gres=gpu:2 State=UNKNOWN
# deliberately no default partition: a run that names none must say so
PartitionName=$PARTITION Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    slurmctld -D -i >"$STATE/log/slurmctld.out" 2>&1 9>&- &
    echo $! >"$STATE/slurmctld.pid"
    slurmd -D -N "$NODE" >"$STATE/log/slurmd.out" 2>&1 9>&- &
    echo $! >"$STATE/slurmd.pid"
    local state=""
    for _ in $(seq 60); do
        state=$(timeout -s KILL 10 sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [[ $state == idle ]] && break
        sleep 0.5
    done
    [[ $state == idle ]] || fail "node $NODE is '${state:-unknown}', not idle: $(tail -3 "$STATE/log/slurmctld.log")"
    log "SLURM $(sinfo -V | cut -d' ' -f2) up: node $NODE, $(sinfo -h -o %c) CPUs, $(sinfo -h -o %G), partition $PARTITION"
}

# --- the checks -------------------------------------------------------------------------

PGIDS=()  # process groups of the snakemake runs started here, for the tear-down

start_smk() {  # start_smk OUT LIMIT_S DIR ARGS...: snakemake in its own process group
    local out=$1 limit=$2 dir=$3
    shift 3
    setsid env PATH="$BIN:$PATH" timeout -s KILL "$limit" "$BIN/snakemake" \
        -s "$ROOT/workflow/Snakefile" --directory "$dir" "$@" >"$out" 2>&1 9>&- &
    STARTED=$!
    PGIDS+=("$STARTED")
}

run_smk() {  # run_smk OUT LIMIT_S DIR ARGS...: start_smk and wait; the exit status in RC
    start_smk "$@"
    RC=0
    wait "$STARTED" || RC=$?
}

expect_rc() {  # expect_rc WANTED OUT WHAT
    ((RC == $1)) || { tail -40 "$2"; fail "$3: exit status $RC, expected $1"; }
}

expect_in() {  # expect_in FILE NEEDLE WHAT
    grep -qF -- "$2" "$1" || { tail -40 "$1"; fail "$3: '$2' not in $1"; }
}

slurm_states() {  # squeue's states of one snakemake run's SLURM jobs (named by its run ID)
    local run_id
    run_id=$(sed -n 's/^SLURM run ID: //p' "$1" | head -1)
    [[ -n $run_id ]] || fail "no SLURM run ID in $1"
    squeue -h -t all --name="$run_id" -o "%T" | sort | uniq -c | xargs
}

gpu_spans() {  # the two GPU training jobs: distinct stand-in GPUs, bound by SLURM, held at once
    "$BIN/python" - "$@" <<'PY'
import json, re, sys

spans = []
for log in sys.argv[1:]:
    text = open(log).read()
    got = re.search(r"fipa devices: (\S+) \(cuda:0\), bound by the scheduler \((.*?)\), no lock, "
                    r"CUDA_VISIBLE_DEVICES=(\S+), from ([0-9.]+)", text)
    end = re.search(r"fipa devices: \S+ released at ([0-9.]+)", text)
    assert got and end, f"{log}: no scheduler-bound GPU claim and release:\n{text[-2000:]}"
    spans.append((got[3], float(got[4]), float(end[1]), got[2]))
spans.sort()
cvds = [s[0] for s in spans]
assert cvds == ["0", "1"], f"CUDA_VISIBLE_DEVICES of the two jobs: {cvds}, expected 0 and 1"
both = min(s[2] for s in spans) - max(s[1] for s in spans)
assert both > 0, f"the jobs held their GPUs one after the other (spans {spans}): one waited"
print(f"GPU jobs: CUDA_VISIBLE_DEVICES {' and '.join(cvds)} ({'; '.join(s[3] for s in spans)}), "
      f"both held for {both:.1f} s at once")
PY
}

ledger_slurm_job() {  # ledger_slurm_job RUNS LABEL: the SLURM job id of LABEL's start line, if any
    "$BIN/python" - "$@" <<'PY'
import json, sys

for line in open(f"{sys.argv[1]}/.grid-ledger.jsonl"):
    d = json.loads(line)
    if d.get("event") == "start" and sys.argv[2] in d["labels"] and d.get("slurm_job"):
        print(d["slurm_job"])
PY
}

summary_equal() {
    "$BIN/python" - "$@" <<'PY'
import sys

import pandas as pd

a, b = (pd.read_csv(p) for p in sys.argv[1:3])
drop = ["wall_s", "run_dir"]  # wall time and the path differ by nature
key = ["task", "partition", "client_method", "aggregator", "seed"]
a, b = (x.drop(columns=drop).sort_values(key).reset_index(drop=True) for x in (a, b))
rows = int(sys.argv[3]) if len(sys.argv) > 3 else 6
assert len(a) == rows, f"{len(a)} rows, expected {rows}"
pd.testing.assert_frame_equal(a, b, check_exact=True)
print(f"summary.csv: {len(a)} runs x {a.shape[1]} ID and metric columns identical")
PY
}

checks() {
    local work=$STATE/work
    rm -rf "$work"
    for d in local slurm fail; do mkdir -p "$work/$d" && cp -r "$ROOT/.test/config" "$work/$d/config"; done
    mkdir -p "$work/gpu/config" && cp "$ROOT/tests/cluster/gpu_config.yaml" "$work/gpu/config/config.yaml"
    for d in cells cells-local; do
        mkdir -p "$work/$d/config" && cp "$ROOT/tests/cluster/cells_config.yaml" "$work/$d/config/config.yaml"
    done
    local slurm=(--profile "$ROOT/profiles/slurm" --slurm-init-seconds-before-status-checks 1)
    local local_pid main_pid gpu_pid cells_pid states n

    # the local reference runs alongside the cluster runs
    start_smk "$work/local.out" 400 "$work/local" --profile "$ROOT/profiles/local" --cores 2 \
        results/summary.csv
    local_pid=$STARTED
    log "local reference run (profiles/local) started"

    # 1. no partition (this cluster has no default one), then an unknown one
    unset SBATCH_PARTITION
    run_smk "$work/no-partition.out" 120 "$work/slurm" "${slurm[@]}"
    expect_rc 1 "$work/no-partition.out" "run without a partition"
    expect_in "$work/no-partition.out" "No SLURM partition given for rule(s)" "run without a partition"
    expect_in "$work/no-partition.out" "export SBATCH_PARTITION=<partition>" "run without a partition"
    SBATCH_PARTITION=nosuch run_smk "$work/bad-partition.out" 120 "$work/slurm" "${slurm[@]}"
    expect_rc 1 "$work/bad-partition.out" "run with an unknown partition"
    expect_in "$work/bad-partition.out" "SLURM partition 'nosuch' of rule(s)" "run with an unknown partition"
    expect_in "$work/bad-partition.out" "partitions of this cluster: $PARTITION" "run with an unknown partition"
    [[ -z $(squeue -h -t all) ]] || fail "jobs were submitted although the partition was wrong"
    [[ ! -e $work/slurm/results ]] || fail "a run without a valid partition started jobs"
    log "ok: a missing or unknown partition stops the run before any job, naming the fix"

    # 2. the .test workflow on the cluster, up to results/summary.csv, in the background;
    #    its six training cells in one batch job
    export SBATCH_PARTITION=$PARTITION
    start_smk "$work/slurm.out" 330 "$work/slurm" results/summary.csv "${slurm[@]}"
    main_pid=$STARTED
    log "SLURM run of the .test workflow started"

    # 2b. alongside, the GPU case (tests/cluster/gpu_config.yaml): two training jobs with
    #     device: auto on the stand-in GPUs (FIPA_FAKE_CUDA=1: they compute on the CPU)
    local runs=results/runs/regression_1d/domain4/local/fedavg
    FIPA_FAKE_CUDA=1 FIPA_SLURM_GPUS=2 start_smk "$work/gpu.out" 300 "$work/gpu" "${slurm[@]}" \
        "$runs/seed0/final.json" "$runs/seed1/final.json"
    gpu_pid=$STARTED
    log "SLURM run of the GPU case started"

    # 2c. alongside, the progress case (tests/cluster/cells_config.yaml): 12 short cells in one
    #     bundle job, 2 long cells in a job each; the seed-0 long cell is cancelled while it trains
    local cells_run=$STATE/work/cells
    T_CELLS=$(date +%s)
    start_smk "$work/cells.out" 330 "$cells_run" results/summary.csv "${slurm[@]}"
    cells_pid=$STARTED
    log "SLURM run of the progress case started"

    # 2d. the progress case: `fipa status` while the long cell trains, then cancel its job
    local long=regression_long/domain4/local/fedavg/seed0 runs=$cells_run/results/runs job="" st
    for _ in $(seq 240); do
        job=$(ledger_slurm_job "$runs" "$long" 2>/dev/null || true)
        [[ -n $job && -s $runs/$long/checkpoint.pt ]] && break
        sleep 0.5
    done
    [[ -n $job ]] || fail "the long cell of the progress case never started (see $work/cells.out)"
    st=$("$BIN/fipa" status "$cells_run/results")
    echo "$st"
    grep -qE "^[^ ]+: [0-9]+/14 cells done, [1-9][0-9]* running, [0-9]+ queued, 0 failed" <<<"$st" \
        || fail "fipa status during the run: no running cell or a wrong count: $st"
    scancel "$job"
    log "ok: fipa status during the run shows running cells; the SLURM job $job of $long cancelled"

    # 3. meanwhile a job that fails on the cluster (a Dirichlet label split of the regression
    #    task, which has no labels: only `fipa partition` sees that), then the same target
    #    after fixing the config
    local part=results/partitions/regression_1d/domain4/seed0.json
    sed -i 's/domain4: {scheme: domain_split, clients: 4, pieces: 1}/domain4: {scheme: dirichlet, clients: 4, alpha: 0.5}/' \
        "$work/fail/config/config.yaml"
    grep -q "scheme: dirichlet" "$work/fail/config/config.yaml" || fail "could not break the config"
    run_smk "$work/fail.out" 150 "$work/fail" "${slurm[@]}" "$part"
    expect_rc 1 "$work/fail.out" "run with a failing job"
    expect_in "$work/fail.out" "Error in rule partition" "run with a failing job"
    expect_in "$work/fail.out" "failed, SLURM status is: 'FAILED'" "run with a failing job"
    expect_in "$work/fail/results/logs/partition/regression_1d/domain4.log" \
        "dirichlet needs a task with class labels" "the failed job's log"
    states=$(slurm_states "$work/fail.out")
    [[ $states == "1 FAILED" ]] || fail "SLURM jobs of the failing run: '$states', expected 1 FAILED"
    cp "$ROOT/.test/config/config.yaml" "$work/fail/config/config.yaml"
    run_smk "$work/fixed.out" 150 "$work/fail" "${slurm[@]}" "$part"
    expect_rc 0 "$work/fixed.out" "rerun after the fix"
    [[ -s $work/fail/$part ]] || fail "the rerun after the fix left no $part"
    states=$(slurm_states "$work/fixed.out")
    [[ $states == "1 COMPLETED" ]] || fail "SLURM jobs of the rerun: '$states', expected 1 COMPLETED"
    log "ok: a failing job is reported FAILED, its reason in the rule's log; the rerun after the fix completes"

    # 3b. the progress case, once it ended (its long cell cancelled above)
    RC=0
    wait "$cells_pid" || RC=$?
    T_CELLS=$(($(date +%s) - T_CELLS))
    expect_rc 1 "$work/cells.out" "progress case with a cancelled job"
    n=$(grep -c "^\[done [0-9]*/14\] " "$work/cells.out" || true)
    ((n == 13)) || fail "$n status lines in the submitting Snakemake's output, expected 13 (14 cells, 1 cancelled)"
    grep -m3 "^\[done " "$work/cells.out"
    n=$(grep -c "has been submitted with SLURM jobid" "$work/cells.out" || true)
    ((n == 5)) || fail "$n SLURM submissions in the progress case, expected 5 (2 partition jobs, 1 bundle, 2 long cells)"
    st=$("$BIN/fipa" status "$cells_run/results")
    echo "$st"
    grep -qF "13/14 cells done, 0 running, 0 queued, 1 failed" <<<"$st" || fail "fipa status after the cancel: $st"
    grep -qF "failed $long" <<<"$st" || fail "fipa status after the cancel does not name $long failed: $st"
    log "ok: 13 status lines in the submitting output; fipa status after the run: $long failed"
    run_smk "$work/cells-rerun.out" 200 "$cells_run" results/summary.csv "${slurm[@]}"
    expect_rc 0 "$work/cells-rerun.out" "rerun of the progress case"
    n=$(grep -c "^\[done 14/14\] $long: " "$work/cells-rerun.out" || true)
    ((n == 1)) || fail "the rerun's output lacks the status line of $long"
    expect_in "$cells_run/results/logs/train/$long.log" "resum" "the cancelled cell's log (resumed from its checkpoint)"
    st=$("$BIN/fipa" status "$cells_run/results")
    echo "$st"
    grep -qF "14/14 cells done, 0 running, 0 queued, 0 failed" <<<"$st" || fail "fipa status after the rerun: $st"
    log "ok: the rerun resumed $long; fipa status: 14/14 done, 0 failed (SLURM wall of the first run: ${T_CELLS} s)"

    # 4. the main run: every non-local job a SLURM job, the six training jobs in two
    RC=0
    wait "$main_pid" || RC=$?
    expect_rc 0 "$work/slurm.out" "SLURM run"
    # 1 partition job (both seeds), 2 warm-up jobs, 1 batch of the 6 training cells, collect
    states=$(slurm_states "$work/slurm.out")
    [[ $states == "5 COMPLETED" ]] || fail "SLURM jobs of the run: '$states', expected 5 COMPLETED"
    n=$(grep -c "has been submitted with SLURM jobid" "$work/slurm.out" || true)
    ((n == 5)) || fail "$n SLURM submissions in the run's output, expected 5"
    n=$(grep -c "^Finished jobid: .* (Rule: train_batch)" "$work/slurm.out" || true)
    ((n == 1)) || fail "$n training batch jobs finished, expected 1"
    n=$(find "$work/slurm/results/runs" -name final.json | wc -l)
    ((n == 6)) || fail "$n training cells finished, expected 6"
    if sacct -n >/dev/null 2>&1; then fail "sacct works here, so squeue's status path went untested"; fi
    log "ok: 5 SLURM jobs COMPLETED, the 6 training cells in 1 batch job; status from squeue (no sacct here)"

    # 5. the GPU case: 1 partition job, 2 training jobs with one GPU each, held at once
    RC=0
    wait "$gpu_pid" || RC=$?
    expect_rc 0 "$work/gpu.out" "SLURM run of the GPU case"
    states=$(slurm_states "$work/gpu.out")
    [[ $states == "3 COMPLETED" ]] || fail "SLURM jobs of the GPU case: '$states', expected 3 COMPLETED"
    n=$(squeue -h -t all --name="$(sed -n 's/^SLURM run ID: //p' "$work/gpu.out" | head -1)" \
        -O "tres-per-job:30" | grep -c "gres:gpu:1" || true)
    ((n == 2)) || fail "$n jobs of the GPU case were submitted with --gpus=1, expected the 2 training jobs"
    gpu_spans "$work"/gpu/results/logs/train/regression_1d/domain4/local/fedavg/seed{0,1}.log \
        || fail "the GPU case's training jobs did not each get their own GPU at once"
    log "ok: 2 device: auto training jobs submitted with --gpus=1, each on its own stand-in GPU, at once"

    # 6. the same numbers as the local run
    RC=0
    wait "$local_pid" || RC=$?
    expect_rc 0 "$work/local.out" "local reference run"
    summary_equal "$work/slurm/results/summary.csv" "$work/local/results/summary.csv" \
        || fail "summary.csv of the SLURM run differs from the local one"
    # the progress case's cells (12 bundled one by one, 2 alone, one cancelled and resumed)
    # against a local run of them, each cell its own job
    run_smk "$work/cells-local.out" 200 "$work/cells-local" --profile "$ROOT/profiles/local" --cores 2 \
        results/summary.csv
    expect_rc 0 "$work/cells-local.out" "local run of the progress case"
    n=$(grep -c "^\[done [0-9]*/14\] " "$work/cells-local.out" || true)
    ((n == 14)) || fail "$n status lines in the local run's output, expected 14 (each once)"
    summary_equal "$cells_run/results/summary.csv" "$work/cells-local/results/summary.csv" 14 \
        || fail "summary.csv of the bundled SLURM run differs from the local one"
    log "PASS: cluster test finished in $(($(date +%s) - T0)) s"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    for pgid in "${PGIDS[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    down
    if ((rc == 0)); then rm -rf "$STATE/work"; else log "state, logs and snakemake output kept in $STATE"; fi
    exit "$rc"
}

exec 9>"/tmp/fipa-slurm-test.lock"  # daemons and runs started below close fd 9
flock -n 9 || cannot "another run of this test holds /tmp/fipa-slurm-test.lock"
case ${1:-test} in
    up) up ;;
    down) down && log "stopped" ;;
    test)
        trap cleanup EXIT
        trap 'exit 143' INT TERM HUP
        up
        checks
        ;;
    *) echo "usage: $0 [test|up|down]" >&2 && exit 2 ;;
esac
