"""Faults injected into real tunes (loopback only, bounded): does anything get lost, hang, print a
traceback, need a person, or outlive the process?

    python benchmarks/fault_injection.py [--kills 20] [--concurrent 4] [--seed 0] [--json FILE]
        [--scenarios silent,lost,concurrent,kills]

Scenarios, each on ShuffleNet 0.25x g3 at 64x64 with every kernel tuned:

* kills: ``--kills`` tunes into one database, each sent SIGKILL, SIGINT or SIGTERM at a random
  moment (2-90 s in: import, task extraction, default seeding, search); each re-run resumes;
* concurrent: ``--concurrent`` tunes at once into one new database (two of the same model, the
  others of other models), then ``compile --db`` of each model from it;
* silent tracker: a tracker that accepts the connection and never answers;
* lost device: the only device under a key killed mid-tune.

Counted per scenario: runs, hangs (no exit within HANG_S of the signal, or of the start),
tracebacks on stderr, unexpected exit codes, orphans (the run's processes alive 3 s after it
ended), databases that need a person (the next tune or compile refuses them), records that do
not replay (their trace does not apply to the kernel they are filed under); and the records
present. Target: zeros throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

MODEL = ["shufflenet_v1_g3_0.25x", "--input-size", "64x64"]
OTHERS = [["mobilenet_v1_0.25", "--input-size", "64x64"],
          ["shufflenet_v1_g8_0.25x", "--input-size", "64x64"]]
HANG_S = 300
EXPECTED = {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tvmshuffle.cli", *args]


def _start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> int:
    return sum(1 for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[bool, str, str]:
    """(hung, stdout, stderr); a hung process is killed."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return False, out.decode(errors="replace"), err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return True, out.decode(errors="replace"), err.decode(errors="replace")


def replay_failures(db: Path) -> tuple[int, int]:
    """(records, records whose trace does not apply to the kernel they are filed under)."""
    from tvm.s_tir import meta_schedule as ms

    from tvmshuffle import records

    if not (db / records.RECORD_FILE).exists():
        return 0, 0
    database = ms.database.JSONDatabase(str(db / records.WORKLOAD_FILE),
                                        str(db / records.RECORD_FILE), allow_missing=False)
    failed = 0
    every = database.get_all_tuning_records()
    for record in every:
        try:
            record.as_measure_candidate()
        except Exception:  # noqa: BLE001 - any failure to apply is a misfiled record
            failed += 1
    return len(every), failed


def _needs_person(db: Path, env: dict) -> bool:
    """Whether a tune of nothing new refuses the database (exit 7: a person must edit it)."""
    proc = subprocess.run(_cli("tune", *MODEL, "--ops", "all", "--trials", "1", "--db", str(db)),
                          capture_output=True, env=env, timeout=HANG_S)
    return proc.returncode == 7


def _row(name: str) -> dict:
    return {"scenario": name, "runs": 0, "hangs": 0, "tracebacks": 0, "bad_exit": 0,
            "orphans": 0, "needs_person": 0, "not_replayable": 0}


def kills(count: int, rng: random.Random, env: dict, work: Path) -> dict:
    row = _row(f"{count} tunes killed at random moments")
    db = work / "kills"
    for i in range(count):
        sig = rng.choice(list(EXPECTED))
        delay = rng.uniform(2, 90)
        proc = _start(["tune", *MODEL, "--ops", "all", "--trials", "400", "--db", str(db)], env)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        children = _descendants(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        hung, _, err = _finish(proc, HANG_S)
        time.sleep(3)
        row["runs"] += 1
        row["hangs"] += hung
        row["tracebacks"] += "Traceback" in err
        row["bad_exit"] += proc.returncode not in (EXPECTED[sig], 0)
        row["orphans"] += _alive(children)
        print(f"  kill {i + 1}/{count}: {sig.name} at {delay:.0f} s -> exit {proc.returncode}"
              f"{' HUNG' if hung else ''}", flush=True)
    row["needs_person"] += _needs_person(db, env)
    row["records"], row["not_replayable"] = replay_failures(db)
    return row


def concurrent(count: int, env: dict, work: Path) -> dict:
    row = _row(f"{count} concurrent tunes into one database")
    db = work / "concurrent"
    models = [MODEL, MODEL, *OTHERS][:count]
    procs = [(m, _start(["tune", *m, "--ops", "all", "--trials", "24", "--db", str(db),
                         "--json"], env)) for m in models]
    for _, proc in procs:
        hung, _, err = _finish(proc, 3 * HANG_S)
        row["runs"] += 1
        row["hangs"] += hung
        row["tracebacks"] += "Traceback" in err
        row["bad_exit"] += proc.returncode != 0
    row["records"], row["not_replayable"] = replay_failures(db)
    for m in {tuple(m) for m in models}:
        compiled = subprocess.run(_cli("compile", *m, "--db", str(db), "-o",
                                       str(work / f"out-{m[0]}"), "--json"),
                                  capture_output=True, env=env, timeout=HANG_S)
        row["needs_person"] += compiled.returncode != 0
    return row


def silent_tracker(env: dict) -> dict:
    row = _row("a tracker that never answers")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)],
                     daemon=True).start()
    port = server.getsockname()[1]
    for command in (["tune", *MODEL, "--trials", "4", "--db", str(Path(tempfile.mkdtemp()))],):
        proc = _start([*command, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "x"], env)
        hung, _, err = _finish(proc, HANG_S)
        row["runs"] += 1
        row["hangs"] += hung
        row["tracebacks"] += "Traceback" in err
        row["bad_exit"] += proc.returncode != 6
    server.close()
    return row


def lost_device(env: dict, work: Path) -> dict:
    from tvmshuffle import records, remote

    row = _row("the only device killed mid-tune")
    db = work / "lost"
    with remote.embedded_device(threads=1, key="anchor") as tracker:
        port = remote._free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
             str(port), "--port-end", str(port + 20), "--tracker", tracker.address, "--key",
             "solo", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        time.sleep(10)
        proc = _start(["tune", *MODEL, "--ops", "grouped", "--trials", "64", "--timeout", "20",
                       "--db", str(db), "--rpc-tracker", tracker.address, "--rpc-key", "solo"],
                      env)
        record_file = db / records.RECORD_FILE
        started = time.monotonic()
        while (proc.poll() is None and time.monotonic() - started < HANG_S
               and (not record_file.exists() or len(record_file.read_bytes().splitlines()) < 2)):
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)
        children = _descendants(proc)
        hung, _, err = _finish(proc, HANG_S)
        time.sleep(3)
        row["runs"] += 1
        row["hangs"] += hung
        row["tracebacks"] += "Traceback" in err
        row["bad_exit"] += proc.returncode != 6
        row["orphans"] += _alive(children)
    row["records"], row["not_replayable"] = replay_failures(db)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scenarios", default="silent,lost,concurrent,kills")
    args = parser.parse_args()
    chosen = set(args.scenarios.split(","))
    work = Path(tempfile.mkdtemp(prefix="tvmshuffle-faults-"))
    env = {**os.environ, "TVMSHUFFLE_LOG_DIR": str(work / "logs")}
    rng = random.Random(args.seed)
    started = time.monotonic()
    rows = []
    for name, run in (("silent", lambda: silent_tracker(env)),
                      ("lost", lambda: lost_device(env, work)),
                      ("concurrent", lambda: concurrent(args.concurrent, env, work)),
                      ("kills", lambda: kills(args.kills, rng, env, work))):
        if name not in chosen:
            continue
        print(f"{name} ...", flush=True)
        rows.append(run())
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("scenario", "records")] + ["records"]
    print(f"\n| scenario | {' | '.join(keys)} |\n|---|{'---|' * len(keys)}")
    for row in rows:
        print(f"| {row['scenario']} | {' | '.join(str(row.get(k, '-')) for k in keys)} |")
    print(f"\n{time.monotonic() - started:.0f} s, work folder {work}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
