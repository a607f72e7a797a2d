"""Process tuning is explicit (byzsgd.tune_process, byzsgd/tuning.py): ``import byzsgd`` leaves
the process alone; the CLI, the processes it launches and the user who asks get GOMP's spin
bound (only where it can take effect) and glibc's memory thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CLEAN = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}

#: Prints, as JSON, GOMP_SPINCOUNT at the moment torch is first imported (a meta path finder
#: that sees the import before it happens), then runs the code in BODY.
WATCH_TORCH = """
import json, os, sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(json.dumps({"at_torch_import": os.environ.get("GOMP_SPINCOUNT")}), flush=True)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Watch())
"""


def _python(code: str, **env: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", code], env={**CLEAN, **env},
                         capture_output=True, text=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_import_byzsgd_changes_no_environment_variable_and_no_allocator_setting():
    code = ("import json, os; before = dict(os.environ); import byzsgd, byzsgd.engine.simulator;"
            "from byzsgd import _memory;"
            "print(json.dumps({'changed': sorted(set(os.environ.items()) ^ set(before.items())),"
            " 'mallopt_calls': _memory.keep_freed_memory.cache_info().currsize}))")
    [result] = _python(code)
    assert result == {"changed": [], "mallopt_calls": 0}


def _tuned(imports: str, **env: str) -> dict:
    code = (f"import json; {imports}; t = byzsgd.tune_process(); "
            "print(json.dumps({'env': __import__('os').environ.get('GOMP_SPINCOUNT'), "
            "'set': t.spin_count_set, 'value': t.spin_count, 'kept': t.freed_memory_kept, "
            "'notes': list(t.notes)}))")
    [result] = _python(code, **env)
    return result


@pytest.mark.parametrize(("imports", "env", "value", "note"), [
    ("import byzsgd", {}, "10000", None),                          # set before torch loads
    ("import byzsgd", {"GOMP_SPINCOUNT": "5"}, "5", None),         # the user's value is kept
    ("import byzsgd", {"OMP_WAIT_POLICY": "active"}, None, "OMP_WAIT_POLICY"),  # user's policy
    ("import torch, byzsgd", {}, None, "torch was imported"),      # too late: libgomp loaded
])
def test_tune_process_bounds_spinning_only_before_torch_and_unless_chosen(imports, env, value,
                                                                          note):
    result = _tuned(imports, **env)
    assert result["env"] == result["value"] == value
    assert result["set"] == (value == "10000")
    assert result["kept"] is (sys.platform == "linux")  # glibc here
    if note is None:
        assert result["notes"] == []
    else:
        assert any(note in n for n in result["notes"]), result["notes"]


def test_tune_process_is_idempotent():
    import byzsgd

    first, second = byzsgd.tune_process(), byzsgd.tune_process()
    assert first.freed_memory_kept == second.freed_memory_kept
    assert second.spin_count_set is False  # nothing left to set the second time


def test_cli_process_has_the_spin_bound_before_torch_loads():
    code = WATCH_TORCH + "from byzsgd.cli import main; sys.exit(main(['list']))"
    assert _python(code) == [{"at_torch_import": "10000"}]


def test_distributed_node_has_the_spin_bound_before_torch_loads():
    # a node whose config names a device this machine lacks: validation loads torch, then fails
    code = WATCH_TORCH + ("from byzsgd.distributed.node import main; "
                          "main(['--workers', '2', '--byzantine', '0', '--device', 'cuda:7'])")
    assert _python(code, RANK="0", WORLD_SIZE="3") == [{"at_torch_import": "10000"}]


def test_sweep_worker_processes_are_tuned(tmp_path):
    # the pool's initializer tunes each spawned worker before it unpickles a job (and torch)
    code = ("import json, multiprocessing as mp, os, byzsgd\n"
            "from byzsgd import _memory\n"
            "def probe(_):\n"
            "    return [os.environ.get('GOMP_SPINCOUNT'),\n"
            "            _memory.keep_freed_memory.cache_info().currsize]\n"
            "if __name__ == '__main__':\n"
            "    with mp.get_context('spawn').Pool(1, initializer=byzsgd.tune_process) as p:\n"
            "        print(json.dumps({'child': p.map(probe, [0])[0],\n"
            "                          'parent': os.environ.get('GOMP_SPINCOUNT')}))\n")
    script = tmp_path / "probe.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], env=CLEAN, capture_output=True,
                         text=True, timeout=300)
    assert json.loads(out.stdout) == {"child": ["10000", 1], "parent": None}, out.stderr
