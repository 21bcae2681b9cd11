"""Launch a training stage on CPU processes for the multi-process tests (tests only).

accelerate builds its FSDP plugin from the launch config on any machine, but switches the
distributed type to FSDP only for GPU-type devices: on a CPU the processes would train as plain
data-parallel copies and the sharding would go untested. This lifts that one gate, so that torch's
``fully_shard`` runs over gloo here; under the DDP config it changes nothing. The stage itself is
the product's module, unchanged.

    accelerate launch --config_file config/accelerate/fsdp.yaml tests/launch_on_cpu.py vlv.stages.finetune_stage2 ARGS

With ``VLV_TEST_STOP_AT_STEP=k`` the main process dies when it logs step k (a preempted job), under
either config.
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate keeps them in step
        self.fsdp_plugin = fsdp_plugin
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)


AcceleratorState.__init__ = _init_fsdp_on_cpu
if "VLV_TEST_STOP_AT_STEP" in os.environ:
    from vlv.training import LossLog

    _append = LossLog.append

    def _append_or_die(self, step, *args):
        if step == int(os.environ["VLV_TEST_STOP_AT_STEP"]):
            raise KeyboardInterrupt(f"stopped at step {step}")
        _append(self, step, *args)

    LossLog.append = _append_or_die
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
