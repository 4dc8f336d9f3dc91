"""Stand-ins for the Mozaik classes that appear in datastore pickles (no Mozaik, neo or torch needed).

A Mozaik ``PickledDataStore`` folder stores, in ``datastore.recordings.pickle``, a neo ``Block``
whose ``segments`` are ``mozaik.storage.neo_neurotools_wrapper.PickledDataStoreNeoWrapper``
objects. Each is pickled as ``NEWOBJ`` of that global (no arguments) followed by ``BUILD`` with the
instance ``__dict__``, which holds the neo ``Segment`` fields (``annotations`` with
``sheet_name`` and ``stimulus``, ``name``, ``description``, ``rec_datetime``, ``block`` …) plus
the wrapper fields ``identifier`` (stem of the ``SegmentN.pickle`` file holding the spikes),
``null`` (True for the blank recorded before the stimulus), ``full``, ``datastore_path``,
``init_sp`` and ``init_as``.

A restricted unpickler (``extract.safe_pickle``) maps the Mozaik global to
:class:`PickledDataStoreNeoWrapper` through :data:`MOZAIK_CLASSES`. The writer
(``corticalrnn.synth.mozaik_writer``) pickles the same class back under the Mozaik name with
:class:`MozaikNamePickler`, without registering any fake ``mozaik`` module.
"""

from __future__ import annotations

import datetime
import io
import pickle
from typing import Any, BinaryIO

WRAPPER_MODULE = "mozaik.storage.neo_neurotools_wrapper"
WRAPPER_NAME = "PickledDataStoreNeoWrapper"


class PickledDataStoreNeoWrapper:
    """Metadata of one recorded segment (one sheet, one stimulus, blank or not); spikes live elsewhere.

    The object keeps the pickled state verbatim in ``__dict__`` (as Mozaik's class does) and adds
    read-only accessors for the fields every reader needs.
    """

    def __init__(self, **state: Any) -> None:
        self.__dict__.update(state)

    def __setstate__(self, state: Any) -> None:
        # Default object state is a dict; a (dict, slots) pair would come from a __slots__ class.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{WRAPPER_NAME}: unexpected state of type {type(state).__name__}")
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        import copyreg

        return (copyreg.__newobj__, (type(self),), dict(self.__dict__))

    @property
    def annotations(self) -> dict[str, Any]:
        return self.__dict__.get("annotations", {})

    @property
    def identifier(self) -> str:
        """File stem of the ``SegmentN.pickle`` that holds this segment's spike trains."""
        return str(self.__dict__["identifier"])

    @property
    def null(self) -> bool:
        """True for the blank recorded before the stimulus named in :attr:`stimulus`."""
        return bool(self.__dict__.get("null", False))

    @property
    def sheet_name(self) -> str:
        return str(self.annotations["sheet_name"])

    @property
    def stimulus(self) -> str:
        """The Mozaik stimulus string (a Python dict literal with sorted keys)."""
        return str(self.annotations["stimulus"])

    @property
    def rec_datetime(self) -> datetime.datetime | None:
        return self.__dict__.get("rec_datetime")

    def __repr__(self) -> str:
        d = self.__dict__
        return (
            f"<{WRAPPER_NAME} {d.get('identifier')!r} sheet={self.annotations.get('sheet_name')!r} "
            f"null={d.get('null')!r}>"
        )


#: (module, name) of each Mozaik global found in datastore pickles -> stand-in class.
MOZAIK_CLASSES: dict[tuple[str, str], type] = {
    (WRAPPER_MODULE, WRAPPER_NAME): PickledDataStoreNeoWrapper,
}

#: stand-in class -> (module, name) it is pickled under.
_PICKLED_NAMES: dict[type, tuple[str, str]] = {cls: key for key, cls in MOZAIK_CLASSES.items()}


class MozaikNamePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickler that writes the stand-in classes under their Mozaik module and class names.

    Uses the pure-Python pickler so that only the global reference is changed, with no fake
    ``mozaik`` module in ``sys.modules``; everything else is pickled exactly as the C pickler
    would (same opcodes for the same protocol).
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        names = _PICKLED_NAMES.get(obj) if isinstance(obj, type) else None
        if names is None:
            super().save_global(obj, name)
            return
        module, qualname = names
        if self.proto < 4:
            raise pickle.PicklingError(f"{qualname} stand-in needs pickle protocol >= 4")
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def dump_with_mozaik_names(obj: Any, file: BinaryIO, protocol: int = 4) -> None:
    """Pickle ``obj`` to ``file`` (protocol 4, as the reference datastores) with Mozaik global names."""
    pickler = MozaikNamePickler(file, protocol=protocol)
    pickler.dump(obj)


def dumps_with_mozaik_names(obj: Any, protocol: int = 4) -> bytes:
    buf = io.BytesIO()
    dump_with_mozaik_names(obj, buf, protocol)
    return buf.getvalue()
