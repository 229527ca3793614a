"""Work that waits for a module to be imported: `run_after_import(name, callback)` runs `callback` at once if
`name` is imported already, and otherwise right after its import, through one finder on sys.meta_path per module.

gelu_ext registers its DTensor sharding strategies this way (importing torch.distributed.tensor takes ~0.7 s) and
its ONNX symbolic functions (torch.onnx is 26 modules, most of what `import gelu_ext` would cost over `import
torch`). Neither can be needed before its module is imported: no DTensor exists before torch.distributed.tensor,
and no export runs before torch.onnx."""

from __future__ import annotations

import importlib.util
import sys
import warnings


class RunAfterImport:
    """A sys.meta_path finder that finds nothing itself: when `module_name` is about to load, it wraps the real
    loader so that its callbacks run right after the module has run, then takes itself off sys.meta_path. (It
    follows importlib.abc.MetaPathFinder's protocol without the base class, whose module costs ~2 ms to import.)"""

    def __init__(self, module_name: str, callback) -> None:
        self.module_name = module_name
        self.callbacks = [callback]
        self._finding = False

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name or self._finding:
            return None
        self._finding = True  # the real spec comes from the finders after this one
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_module_then_callbacks(module):
            load(module)  # if the module fails, so does its import, and the hook stays for the next attempt
            self.remove()
            for callback in self.callbacks:
                callback()

        spec.loader.exec_module = exec_module_then_callbacks
        return spec

    def remove(self) -> None:
        # Called once the spec was found, so not while the import machinery iterates over sys.meta_path.
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def hook_for(module_name: str) -> RunAfterImport | None:
    return next((f for f in sys.meta_path if isinstance(f, RunAfterImport) and f.module_name == module_name), None)


def run_after_import(module_name: str, callback) -> None:
    """callback() now if `module_name` is imported, else right after it is (once)."""
    if module_name in sys.modules:
        callback()
        return
    hook = hook_for(module_name)
    if hook is None:
        sys.meta_path.insert(0, RunAfterImport(module_name, callback))
    elif callback not in hook.callbacks:
        hook.callbacks.append(callback)


def warn_on_failure(what: str, consequence: str, callback):
    """callback, wrapped so that a failure neither breaks the user's import of the module it waited for nor goes
    unseen: it becomes a RuntimeWarning naming `what` failed and `consequence`."""

    def guarded() -> None:
        try:
            callback()
        except Exception as error:  # any failure of the registration API it calls
            warnings.warn(f"gelu_ext: could not {what} ({type(error).__name__}: {error}); {consequence}",
                          RuntimeWarning, stacklevel=2)  # fmt: skip

    return guarded
