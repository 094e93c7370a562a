"""OpNames: a dispatch mode that records the name of every aten operator run inside it (`with OpNames() as ops:`,
then `ops.names`), for tests that check which kernels a piece of code launches."""
from torch.utils._python_dispatch import TorchDispatchMode


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
