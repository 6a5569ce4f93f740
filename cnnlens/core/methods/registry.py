"""The one description of every method: what it needs of a backend, the kind of map it makes,
whether it takes a layer, and its options (type, default, help, check). The dispatcher, the
command line, the renderer, the report, ``compare``, the sanity measures and the tests all read
these descriptions; a method is added by registering it here once (``@register``)."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union, cast

import numpy as np

from ..backend import check_capabilities
from ..errors import InvalidInputError, UnknownMethodError
from ..tokens import parse_reshape

#: kinds of map: an attribution over the input's pixels and channels (N, C, H, W); a CAM-like
#: heatmap over the image (N, H, W); a layer's activations (N, K, h, w)
INPUT, CAM, LAYER_MAP = "input", "cam", "activations"
#: how a method takes ``layer``: not at all; one layer; one or a list served by one pass; at most the
#: one layer the model's head pools, which the method finds itself (CAM)
NO_LAYER, ONE_LAYER, LAYERS, HEAD_LAYER = "none", "one", "many", "head"


@dataclass(frozen=True)
class Option:
    """One keyword option of a method. ``check(value)`` returns the value to use or raises
    InvalidInputError; ``cli_type`` converts the command line's string (None: not on the CLI)."""

    name: str
    default: Any
    help: str
    check: Optional[Callable[[Any], Any]] = None
    cli_type: Optional[Callable[[str], Any]] = None

    def validate(self, value: Any) -> Any:
        return self.check(value) if self.check is not None else value


@dataclass(frozen=True)
class Method:
    """A method: its function ``(backend, x, target, layer, **options) -> Explanation`` and its
    description."""

    name: str
    function: Callable[..., Any]
    needs: FrozenSet[str]
    kind: str
    layer: str = NO_LAYER
    options: Tuple[Option, ...] = ()
    summary: str = ""
    #: for an input attribution SmoothGrad can smooth: ``attribute(backend, x, target, batch, **options)
    #: -> (maps, outputs)``, the attribution of any images (noisy ones too) for a target given per image
    attribute: Optional[Callable[..., Tuple[np.ndarray, np.ndarray]]] = None
    #: why ``cnnlens.export_explainer`` cannot write the method into an ONNX file as a fixed graph;
    #: None when it can (the explainer builder holds one head per such method)
    not_exportable: Optional[str] = None

    @property
    def exportable(self) -> bool:
        """Whether the method can be written into an explainer ONNX file."""
        return self.not_exportable is None

    @property
    def smoothable(self) -> bool:
        return self.attribute is not None

    @property
    def layered(self) -> bool:
        """Whether the method takes a ``layer``."""
        return self.layer != NO_LAYER

    @property
    def defaults(self) -> Dict[str, Any]:
        """Keyword options and their defaults."""
        return {o.name: o.default for o in self.options}

    def check_options(self, given: Dict[str, Any], skip: Sequence[str] = (), context: str = "") -> Dict[str, Any]:
        """``given`` options checked and converted by their declarations; an unknown one (or one in
        ``skip``) is an InvalidInputError listing the options there are (``context`` prefixes it)."""
        allowed = {o.name: o for o in self.options if o.name not in skip}
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise InvalidInputError(f"{context}{self.name} has no option {', '.join(map(repr, unknown))}; its "
                                    f"options: {', '.join(allowed) or 'none'}")
        return {name: allowed[name].validate(value) for name, value in given.items()}

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)


METHODS: Dict[str, Method] = {}


def positive_int(name: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        return int(value)
    return check


def optional_positive_int(name: str) -> Callable[[Any], Optional[int]]:
    strict = positive_int(name)
    return lambda value: None if value is None else strict(value)


def fraction(name: str, low: float = 0.0, high: float = float("inf"), open_low: bool = False,
             what: str = "") -> Callable[[Any], float]:
    """A finite number in [low, high] ((low, high] with ``open_low``); ``what`` describes it in the error."""
    def check(value: Any) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
              and np.isfinite(value) and (value > low if open_low else value >= low) and value <= high)
        if not ok:
            bound = f"> {low:g}" if open_low else f">= {low:g}"
            top = f" and <= {high:g}" if np.isfinite(high) else ""
            raise InvalidInputError(f"{name} must be {what or f'a number {bound}{top}'}, got {value!r}")
        return float(value)
    return check


def one_of(name: str, choices: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return cast(str, value)
    return check


def _reshape(value: Any) -> Any:
    parse_reshape(value)  # checked here, read per layer by core.tokens.read_as_maps
    return value


def seed_value(value: Any) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
        raise InvalidInputError(f"seed must be a non-negative int or None, got {value!r}")
    return None if value is None else int(value)


#: every method's ``batch_size``
BATCH_SIZE = Option("batch_size", None, "images per forward/backward pass (chosen automatically)",
                    optional_positive_int("batch_size"), int)
#: the reference image of occlusion and Integrated Gradients
BASELINE = Option("baseline", 0.0, "the reference image, a number (Python: also "
                  "one value per channel or a (C, H, W) image) (0)", None, float)
#: how a layer's output is laid out where cnnlens cannot tell (tokens, channels-last maps): core.tokens
RESHAPE = Option("reshape", None, "how the layer's output lays out as maps where cnnlens cannot tell: 'HxW' (the "
                 "grid), 'drop=D' (leading tokens to drop), 'channels=first|last', comma-separated (Python: also a "
                 "dict, or a function (N, ...) -> (N, K, h, w)); inferred by default", _reshape, str)
#: the seed of the methods that draw random numbers
SEED = Option("seed", 0, "random seed; results do not depend on the batch or the other images (0)", seed_value, int)


#: a method's function, returned unchanged by ``register``
_Function = TypeVar("_Function", bound=Callable[..., Any])


def register(name: str, *, needs: Iterable[str], kind: str, layer: str = NO_LAYER,
             options: Sequence[Option] = (), attribute: Optional[Callable[..., Tuple[np.ndarray, np.ndarray]]] = None,
             not_exportable: Optional[str] = None) -> Callable[[_Function], _Function]:
    """Register the decorated function as method ``name`` (its docstring's first line is its summary).
    ``not_exportable``: why the method cannot be a fixed ONNX graph (None: it exports)."""
    def decorate(function: _Function) -> _Function:
        all_options = tuple(options) + (BATCH_SIZE,)
        keywords = [p.name for p in inspect.signature(function).parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY]
        declared = [o.name for o in all_options]
        if sorted(keywords) != sorted(declared):  # the function and its description must agree
            raise TypeError(f"method {name}: options {declared} do not match the function's {keywords}")
        for option in all_options:
            for other in METHODS.values():
                same = [o for o in other.options if o.name == option.name]
                if same and same[0].cli_type is not option.cli_type:
                    raise TypeError(f"option {option.name!r} of {name} and {other.name} must take the same type")
        summary = (inspect.getdoc(function) or "").split("\n")[0]
        METHODS[name] = Method(name, function, check_capabilities(frozenset(needs), f"method {name}"), kind, layer, all_options, summary, attribute,
                               not_exportable)
        return function
    return decorate


def lookup(name: str) -> Method:
    """The registered method ``name``, or an UnknownMethodError suggesting close names."""
    if name in METHODS:
        return METHODS[name]
    lowered = {m.lower(): m for m in METHODS}
    close = [lowered[c] for c in difflib.get_close_matches(str(name).lower(), lowered, n=3)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownMethodError(f"unknown method {name!r}.{hint} Methods: {', '.join(METHODS)}")


def supported_methods(capabilities: FrozenSet[str]) -> List[str]:
    """The method names a backend with these capabilities can run."""
    return [name for name, m in METHODS.items() if m.needs <= capabilities]


def exportable_methods() -> List[str]:
    """The methods ``cnnlens.export_explainer`` can write into an ONNX file."""
    return [name for name, m in METHODS.items() if m.exportable]


def all_options() -> Dict[str, Tuple[Option, List[str]]]:
    """Every option name once, with the methods that take it (for the command line)."""
    found: Dict[str, Tuple[Option, List[str]]] = {}
    for method in METHODS.values():
        for option in method.options:
            found.setdefault(option.name, (option, []))[1].append(method.name)
    return found


def method_list(methods: Union[str, Sequence[str]], every: Sequence[str]) -> List[str]:
    """The methods a user named, as registered names in order, once each: ``"gradcam,saliency"``,
    a list of names or of comma-separated names (a repeated command-line flag); ``"all"`` stands
    for ``every``. An unknown name is an UnknownMethodError suggesting close names.

    >>> method_list(["gradcam, saliency", "gradcam"], every=[])
    ['gradcam', 'saliency']
    """
    items = [methods] if isinstance(methods, str) else list(methods)
    names: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInputError(f"methods must be names (strings), got {item!r}")
        for name in (n.strip() for n in item.split(",")):
            if name == "all":
                names.extend(every)
            elif name:
                names.append(lookup(name).name)
    return list(dict.fromkeys(names))


def check_options_apply(methods: Sequence[str], given: Iterable[str], spelled: Callable[[str], str],
                        among: Optional[Sequence[str]] = None) -> None:
    """An option that none of ``methods`` takes is an InvalidInputError naming the methods that do
    (of ``among``, default all): an option is never dropped silently. ``spelled`` writes an option's
    name as the user gave it (``--steps`` on the command line, ``option 'steps'`` in Python)."""
    chosen = ", ".join(methods)
    for name in given:
        if any(name in lookup(m).defaults for m in methods):
            continue
        takers = [m for m in (among if among is not None else list(METHODS)) if name in lookup(m).defaults]
        what = f"it is an option of {', '.join(takers)}" if takers else "no method takes it"
        raise InvalidInputError(f"{spelled(name)} does not apply to {chosen}: {what}")
