"""Start a training stage on several machines from inside one cluster job.

One copy runs on each machine (the rule starts them with ``srun --ntasks-per-node=1`` when
``launch.<stage>.machines`` > 1); each finds its machine rank and the main machine's address and
hands over to ``accelerate launch`` with the committed config, ``--processes`` per machine. The
global batch is still ``batch_size`` (split over machines x processes; gradient accumulation fills
it on fewer devices).

Where the rank and the main address come from: ``VLV_MACHINE_RANK`` and ``VLV_MAIN_ADDR`` when set
(any scheduler, and the tests), else SLURM (``SLURM_NODEID``; the first host of
``SLURM_JOB_NODELIST`` by ``scontrol show hostnames``). The port: ``--port``, else
``VLV_MAIN_PORT``, else 29500 plus the SLURM job id modulo 1000 (two jobs sharing a main machine
do not collide).

Example (what the rule runs on a two-machine SLURM allocation):
    srun --nodes=2 --ntasks-per-node=1 python -m vlv.launch --config config/accelerate/ddp.yaml \
        --processes 8 --machines 2 -m vlv.stages.distill_stage1 --params ... --out ... --work ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping


def placement(env: Mapping[str, str]) -> tuple[int, str]:
    """(machine rank, main machine's address) of this copy."""
    if "VLV_MACHINE_RANK" in env:
        return int(env["VLV_MACHINE_RANK"]), env.get("VLV_MAIN_ADDR", "127.0.0.1")
    if "SLURM_NODEID" in env and "SLURM_JOB_NODELIST" in env:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
        ).stdout.split()
        return int(env["SLURM_NODEID"]), hosts[0]
    raise SystemExit(
        "vlv.launch: no machine rank: run it under srun in a SLURM job, or set VLV_MACHINE_RANK and VLV_MAIN_ADDR"
    )


def main_port(env: Mapping[str, str], port: int | None) -> int:
    if port is not None:
        return port
    if "VLV_MAIN_PORT" in env:
        return int(env["VLV_MAIN_PORT"])
    return 29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000


def command(config: str, processes: int, machines: int, rank: int, main: str, port: int, module_args: list[str]):
    """The ``accelerate launch`` command of machine ``rank`` (``--num_processes`` counts all machines)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", config,
        "--num_machines", str(machines),
        "--num_processes", str(processes * machines),
        "--machine_rank", str(rank),
        "--main_process_ip", main,
        "--main_process_port", str(port),
        *module_args,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-m" not in argv:
        raise SystemExit("usage: python -m vlv.launch --config C --processes P --machines M -m vlv.<stage> ARGS...")
    cut = argv.index("-m")
    p = argparse.ArgumentParser(prog="python -m vlv.launch", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="accelerate config (config/accelerate/*.yaml)")
    p.add_argument("--processes", type=int, required=True, help="processes (GPUs) per machine")
    p.add_argument("--machines", type=int, required=True)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv[:cut])
    rank, main = placement(os.environ)
    if not 0 <= rank < args.machines:
        raise SystemExit(f"vlv.launch: machine rank {rank} is outside 0..{args.machines - 1}")
    cmd = command(args.config, args.processes, args.machines, rank, main, main_port(os.environ, args.port), argv[cut:])
    print(f"vlv.launch: machine {rank} of {args.machines}, main {main}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)  # accelerate takes this process's place: the scheduler's signals reach it


if __name__ == "__main__":
    raise SystemExit(main())
