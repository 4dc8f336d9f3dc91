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


# ---------------------------------------------------------------------------------------------
# analysis data structures (``datastore.analysis.pickle``)
#
# Mozaik saves ``DataStore.analysis_results`` (a list of ``AnalysisDataStructure`` objects) with
# ``pickle.dump`` (mozaik/storage/datastore.py, ``PickledDataStore.save``). Each is a
# ``MozaikParametrized`` (a ``param.Parameterized``, param 1.5.1 pinned in Mozaik's
# requirements.txt): pickled as ``NEWOBJ`` of its class + ``BUILD`` with the instance
# ``__dict__``, where every parameter value lives under ``_<name>_param_value`` and the
# ``expanded_paramset_params_dict`` holds the parameter objects themselves
# (``mozaik.tools.mozaik_parametrized.SString`` / ``SInteger`` / ``SNumber``, slot state dicts).
# ``Connections`` (mozaik/analysis/data_structures.py) adds ``weights`` and ``delays`` (lists of
# (pre index, post index, value), in practice numpy float64 ``[n, 3]`` arrays from
# ``Projection.get(['weight', 'delay'], format='list')`` split into columns (0, 1, 2) and
# (0, 1, 3), mozaik/connectors/__init__.py ``Connector.store_connections``), ``source_size``,
# ``target_size``, and the parameters ``proj_name``, ``source_name``, ``target_name``.

ANALYSIS_MODULE = "mozaik.analysis.data_structures"
#: older Mozaik releases kept the same classes in this module
ANALYSIS_MODULE_OLD = "mozaik.analysis.analysis_data_structures"
PARAMETRIZED_MODULE = "mozaik.tools.mozaik_parametrized"
#: analysis data structure classes of Mozaik (all read through :class:`AnalysisDataStructure`)
ANALYSIS_CLASSES: tuple[str, ...] = (
    "AnalysisDataStructure",
    "SingleValue",
    "SingleValueList",
    "PerNeuronValue",
    "PerNeuronPairValue",
    "AnalysisDataStructure1D",
    "AnalogSignal",
    "AnalogSignalList",
    "PerNeuronPairAnalogSignalList",
    "ConductanceSignalList",
)


class AnalysisDataStructure:
    """A Mozaik analysis data structure: the pickled ``__dict__`` verbatim, parameters by name."""

    def __init__(self, **state: Any) -> None:
        self.__dict__.update(state)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{type(self).__name__}: unexpected state of type {type(state).__name__}"
            )
        self.__dict__.update(state)

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        import copyreg

        return (copyreg.__newobj__, (type(self),), dict(self.__dict__))

    def param(self, name: str, default: Any = None) -> Any:
        """Value of a Mozaik parameter (param 1.x keeps it as ``_<name>_param_value``)."""
        d = self.__dict__
        key = f"_{name}_param_value"
        if key in d:
            return d[key]
        return d.get(name, default)

    @property
    def identifier(self) -> str | None:
        return self.param("identifier")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} identifier={self.identifier!r}>"


class Connections(AnalysisDataStructure):
    """``mozaik.analysis.data_structures.Connections``: one projection's synapses."""

    @property
    def proj_name(self) -> str:
        return str(self.param("proj_name"))

    @property
    def source_name(self) -> str:
        return str(self.param("source_name"))

    @property
    def target_name(self) -> str:
        return str(self.param("target_name"))

    @property
    def weights(self) -> Any:
        """(pre index, post index, weight) rows; pre/post index the sheets' populations."""
        return self.__dict__.get("weights")

    @property
    def delays(self) -> Any:
        """(pre index, post index, delay in ms) rows."""
        return self.__dict__.get("delays")


class MozaikParameter:
    """A ``param`` parameter object (``SString``, ``SInteger``, ``SNumber``): its slot state."""

    def __init__(self, **state: Any) -> None:
        self.__dict__.update(state)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        import copyreg

        return (copyreg.__newobj__, (type(self),), dict(self.__dict__))


class SString(MozaikParameter):
    pass


class SInteger(MozaikParameter):
    pass


class SNumber(MozaikParameter):
    pass


class SParameterSet(MozaikParameter):
    pass


_PARAMETER_CLASSES: dict[str, type] = {
    "SString": SString,
    "SInteger": SInteger,
    "SNumber": SNumber,
    "SParameterSet": SParameterSet,
}
for _module in (ANALYSIS_MODULE_OLD, ANALYSIS_MODULE):  # the current module last: pickled under it
    for _name in ANALYSIS_CLASSES:
        MOZAIK_CLASSES[(_module, _name)] = AnalysisDataStructure
    MOZAIK_CLASSES[(_module, "Connections")] = Connections
for _name, _cls in _PARAMETER_CLASSES.items():
    MOZAIK_CLASSES[(PARAMETRIZED_MODULE, _name)] = _cls
# the owner of the ``name`` parameter (a class reference in each parameter object's state)
MOZAIK_CLASSES[(PARAMETRIZED_MODULE, "MozaikParametrized")] = AnalysisDataStructure
_PICKLED_NAMES.update({cls: key for key, cls in MOZAIK_CLASSES.items()})
_PICKLED_NAMES[AnalysisDataStructure] = (ANALYSIS_MODULE, "AnalysisDataStructure")
