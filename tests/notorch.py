"""A pytest plugin that hides PyTorch, to check that the torch-free tests run without it:

    PYTHONPATH=tests python -m pytest -p notorch tests/test_lr_scheduler.py tests/test_optim_torch_parity.py

`import torch` then fails as it does where torch is not installed (ModuleNotFoundError), so the
parity tests skip (tests/torch_util.py) and the rest must pass.
"""
import sys


class _HideTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/notorch.py)")
        return None


for _name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
    del sys.modules[_name]
sys.meta_path.insert(0, _HideTorch())
