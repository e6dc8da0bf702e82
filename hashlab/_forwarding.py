"""ForwardingModule: the module class of a re-exporting module whose code was split into parts.

``sys.modules[__name__].__class__ = ForwardingModule`` (after ``_PARTS = (part, ...)``) makes an
assignment of one of the module's names assign it in every part that holds the name too, as
when the code lived in one module: ``monkeypatch.setattr(module, name, value)`` and its undo
reach the code that reads the name in its part.
"""
import types


class ForwardingModule(types.ModuleType):
    def __setattr__(self, name, value):
        for part in vars(self)["_PARTS"]:
            if name in vars(part):
                setattr(part, name, value)
        super().__setattr__(name, value)
