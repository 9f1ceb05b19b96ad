"""The checker's static types: a small lattice over the values of rule code.

    def (top: unknown, anything goes)
    ├── String  int  long  double  boolean  null  Closure
    ├── List(elem)  Map(elem)          elem: the element (or map value) type when known
    ├── Fact(T)                        a fact of type T of the same workflow
    ├── Error                          the parameter of an `error` section
    └── Pending(result)                the placeholder a declared function call (or `start`)
                                       gives inside `action`; `result` is the declared return type

`def` is the top: whatever is unknown stays `def`, and nothing typed `def` is ever reported, so
the checker only speaks about mistakes it is sure of. `null` fits every type (fields are
nullable). Types are interned: compare them with `is` or `==` alike.
"""

from __future__ import annotations

DEF_K = "def"
STRING_K = "String"
INT_K = "int"
LONG_K = "long"
DOUBLE_K = "double"
BOOLEAN_K = "boolean"
LIST_K = "List"
MAP_K = "Map"
NULL_K = "null"
CLOSURE_K = "Closure"
FACT_K = "Fact"
ERROR_K = "Error"
PENDING_K = "Pending"

# The type names a declaration may use besides the workflow's fact types (SPEC section 2).
DECLARABLE = (STRING_K, INT_K, LONG_K, DOUBLE_K, BOOLEAN_K, LIST_K, MAP_K, DEF_K)
NUMERIC = frozenset((INT_K, LONG_K, DOUBLE_K))
INTEGRAL = frozenset((INT_K, LONG_K))

# The fields of an `error` section's parameter (SPEC section 2, "Sections and statements").
ERROR_FIELDS = {"message": STRING_K, "type": STRING_K, "function": STRING_K, "attempts": INT_K}


class Ty:
    """One static type. Build them with the module's constructors (they intern), never directly."""

    __slots__ = ("kind", "fact", "elem")

    def __init__(self, kind: str, fact: str | None = None, elem: Ty | None = None) -> None:
        self.kind = kind
        self.fact = fact
        self.elem = elem

    def __repr__(self) -> str:
        return f"Ty({self})"

    def __str__(self) -> str:
        if self.kind == FACT_K:
            return self.fact or FACT_K
        if self.kind == PENDING_K:
            return "the result of a function call"
        if self.kind == ERROR_K:
            return "error"
        return self.kind


_INTERNED: dict[tuple[str, str | None, int], Ty] = {}


def _make(kind: str, fact: str | None = None, elem: Ty | None = None) -> Ty:
    key = (kind, fact, id(elem))
    ty = _INTERNED.get(key)
    if ty is None:
        ty = _INTERNED[key] = Ty(kind, fact, elem)
    return ty


DEF = _make(DEF_K)
STRING = _make(STRING_K)
INT = _make(INT_K)
LONG = _make(LONG_K)
DOUBLE = _make(DOUBLE_K)
BOOLEAN = _make(BOOLEAN_K)
LIST = _make(LIST_K)
MAP = _make(MAP_K)
NULL = _make(NULL_K)
CLOSURE = _make(CLOSURE_K)
ERROR = _make(ERROR_K)
PENDING = _make(PENDING_K, elem=DEF)

_SIMPLE = {t.kind: t for t in (DEF, STRING, INT, LONG, DOUBLE, BOOLEAN, LIST, MAP)}


def list_of(elem: Ty | None) -> Ty:
    return LIST if elem is None or elem is DEF else _make(LIST_K, elem=elem)


def map_of(elem: Ty | None) -> Ty:
    return MAP if elem is None or elem is DEF else _make(MAP_K, elem=elem)


def fact(name: str) -> Ty:
    return _make(FACT_K, fact=name)


def pending(result: Ty) -> Ty:
    return _make(PENDING_K, elem=result)


def closure(result: Ty) -> Ty:
    """A closure value; `elem` is the type of what it returns (used by `collect` and friends)."""
    return CLOSURE if result is DEF else _make(CLOSURE_K, elem=result)


def declared(name: str, fact_types: dict | frozenset | set) -> Ty | None:
    """The type a declaration names, or None when `name` is not a type of this workflow."""
    simple = _SIMPLE.get(name)
    if simple is not None:
        return simple
    if name in fact_types:
        return fact(name)
    return None


def is_pending(ty: Ty) -> bool:
    return ty.kind == PENDING_K


def holds_pending(ty: Ty) -> bool:
    """True for a placeholder, or a list/map/closure whose elements or result are placeholders."""
    while ty is not None:
        if ty.kind == PENDING_K:
            return True
        ty = ty.elem if ty.kind in (LIST_K, MAP_K) else None
    return False


def resolved(ty: Ty) -> Ty:
    """The type a value has once every placeholder in it is replaced by its result (reaction)."""
    if ty.kind == PENDING_K:
        return ty.elem or DEF
    if ty.kind == LIST_K and ty.elem is not None:
        return list_of(resolved(ty.elem))
    if ty.kind == MAP_K and ty.elem is not None:
        return map_of(resolved(ty.elem))
    return ty


def element(ty: Ty) -> Ty:
    """What iterating over a value of type `ty` gives (DEF when unknown)."""
    if ty.kind == LIST_K:
        return ty.elem or DEF
    if ty.kind == STRING_K:
        return STRING
    return DEF


def join(a: Ty, b: Ty) -> Ty:
    """The least type holding both: the type of `c ? a : b`, or of a local assigned both."""
    if a is b:
        return a
    ka, kb = a.kind, b.kind
    if ka == NULL_K:
        return b
    if kb == NULL_K:
        return a
    if ka == PENDING_K or kb == PENDING_K:
        # A value that may be a placeholder must be treated as one; once resolved it is the
        # result or the plain value, so the result type joins both.
        ra = (a.elem or DEF) if ka == PENDING_K else a
        rb = (b.elem or DEF) if kb == PENDING_K else b
        return pending(join(ra, rb))
    if ka in NUMERIC and kb in NUMERIC:
        return DOUBLE if DOUBLE_K in (ka, kb) else LONG
    if ka == kb and ka in (LIST_K, MAP_K):
        elem = join(a.elem or DEF, b.elem or DEF) if a.elem is not None and b.elem is not None else DEF
        return list_of(elem) if ka == LIST_K else map_of(elem)
    if ka == kb == CLOSURE_K:
        return CLOSURE
    return DEF


def assignable(value: Ty, target: Ty) -> bool:
    """False only when a value of type `value` surely does not fit a slot of type `target`."""
    kv, kt = value.kind, target.kind
    if kv == CLOSURE_K:
        return False  # closures are code, never data: they cannot be stored or sent anywhere
    if kv == DEF_K or kt == DEF_K or kv == NULL_K or value is target:
        return True
    if kt in INTEGRAL:
        return kv in INTEGRAL
    if kt == DOUBLE_K:
        return kv in NUMERIC
    if kt == FACT_K:
        return kv == FACT_K and value.fact == target.fact
    if kt == MAP_K:
        return kv in (MAP_K, ERROR_K)
    return kv == kt


def comparable_for_equality(a: Ty, b: Ty) -> bool:
    """False when `a == b` is surely always false (legal, but a likely bug)."""
    ka, kb = a.kind, b.kind
    if DEF_K in (ka, kb) or NULL_K in (ka, kb) or PENDING_K in (ka, kb):
        return True
    if ka in NUMERIC and kb in NUMERIC:
        return True
    if ka == FACT_K and kb == FACT_K:
        return a.fact == b.fact
    if ERROR_K in (ka, kb):
        return ka in (MAP_K, ERROR_K) and kb in (MAP_K, ERROR_K)
    return ka == kb


def orderable(a: Ty, b: Ty) -> bool:
    """False when `a < b` surely fails at run time (the engine orders numbers, strings, booleans
    and lists, each only with its own kind; null compares false)."""
    ka, kb = a.kind, b.kind
    if DEF_K in (ka, kb) or NULL_K in (ka, kb) or PENDING_K in (ka, kb):
        return True
    if ka in NUMERIC:
        return kb in NUMERIC
    if ka in (STRING_K, BOOLEAN_K, LIST_K):
        return ka == kb
    return False
