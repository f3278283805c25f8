"""The rule book: the one place that says what a kernel may touch.

Everything here is *data*.  The static checker (:mod:`pyrecks.compiler.checker`), the guard
rewriter (:mod:`pyrecks.compiler.rewriter`), the run-time guards (:mod:`pyrecks.vm.guards`),
the sandbox's module proxies and builtins (:mod:`pyrecks.vm.sandbox`), the policy defaults
(:mod:`pyrecks.compiler.policy`, hence ``pyrecksc policy show``) and the rule tables in
``docs/kernels.md`` all read these tables; ``tests/test_rulebook.py`` keeps the docs equal to
them.  Before the rule book the same lists lived in several places and drifted apart (56 frame
attributes in the checker, 23 in the sandbox; three format-template guards).

The decisions, in one paragraph: a kernel imports only :data:`MODULES`, and from each module
only the names listed for it (function granularity: ``functools.reduce`` yes,
``functools.update_wrapper`` no; :data:`REFUSED_MODULE_NAMES` says why a name is out).  It
calls only :data:`ALLOWED_BUILTINS`.  It reads attributes by the *type* of the object: dunders
other than :data:`SAFE_DUNDER_ATTRIBUTES`, :data:`FRAME_ATTRIBUTES` and names starting with
``_`` are refused on everything but instances of classes the kernel defines itself;
:data:`CLASS_REFUSED_ATTRIBUTES` are refused on classes; :data:`WRAPPED_ATTRIBUTES` are handed
out only behind a guard.  Module level binds only immutable values, built by
:data:`PURE_CONSTRUCTORS` at most; classes may not define :data:`CLASS_HOOKS`.

Modules an operator adds to the policy's allow-list that the rule book does not know
(``numpy``) get the old, coarser rule: every public attribute that is not itself a module.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Allowed modules and, per module, the names a kernel may import or read from it.  The
#: sandbox's module proxies hold exactly these (those that exist on the running Python); the
#: checker refuses any other name with PK102/PK303.  Submodules are listed on their own.
MODULES: Final = MappingProxyType(
    {
        "base64": _names(
            "a85decode a85encode b16decode b16encode b32decode b32encode b32hexdecode "
            "b32hexencode b64decode b64encode b85decode b85encode decodebytes encodebytes "
            "standard_b64decode standard_b64encode urlsafe_b64decode urlsafe_b64encode "
            "MAXBINSIZE MAXLINESIZE bytes_types"
        ),
        "binascii": _names(
            "Error Incomplete a2b_base64 a2b_hex a2b_qp a2b_uu b2a_base64 b2a_hex b2a_qp "
            "b2a_uu crc32 crc_hqx hexlify unhexlify"
        ),
        "bisect": _names("bisect bisect_left bisect_right insort insort_left insort_right"),
        "cmath": _names(
            "acos acosh asin asinh atan atanh cos cosh e exp inf infj isclose isfinite isinf "
            "isnan log log10 nan nanj phase pi polar rect sin sinh sqrt tan tanh tau"
        ),
        "collections": _names(
            "ChainMap Counter OrderedDict UserDict UserList UserString defaultdict deque namedtuple"
        ),
        "collections.abc": _names(
            "AsyncGenerator AsyncIterable AsyncIterator Awaitable ByteString Callable "
            "Collection Container Coroutine Generator Hashable ItemsView Iterable Iterator "
            "KeysView Mapping MappingView MutableMapping MutableSequence MutableSet Reversible "
            "Sequence Set Sized ValuesView"
        ),
        "copy": _names("Error copy deepcopy error"),
        "dataclasses": _names(
            "Field FrozenInstanceError InitVar KW_ONLY MISSING asdict astuple dataclass field "
            "fields is_dataclass replace"
        ),
        "datetime": _names("MAXYEAR MINYEAR UTC date datetime time timedelta timezone tzinfo"),
        "decimal": _names(
            "Clamped Context ConversionSyntax Decimal DecimalException DecimalTuple "
            "DivisionByZero DivisionImpossible DivisionUndefined FloatOperation HAVE_CONTEXTVAR "
            "HAVE_THREADS Inexact InvalidContext InvalidOperation MAX_EMAX MAX_PREC MIN_EMIN "
            "MIN_ETINY Overflow ROUND_05UP ROUND_CEILING ROUND_DOWN ROUND_FLOOR ROUND_HALF_DOWN "
            "ROUND_HALF_EVEN ROUND_HALF_UP ROUND_UP Rounded Subnormal Underflow localcontext"
        ),
        "enum": _names(
            "CONFORM CONTINUOUS EJECT KEEP NAMED_FLAGS STRICT UNIQUE Enum EnumCheck Flag "
            "FlagBoundary IntEnum IntFlag ReprEnum StrEnum auto member nonmember unique verify"
        ),
        "fractions": _names("Decimal Fraction"),
        "functools": _names(
            "cache cached_property cmp_to_key lru_cache partial partialmethod reduce total_ordering"
        ),
        "hashlib": _names(
            "blake2b blake2s md5 new pbkdf2_hmac scrypt sha1 sha224 sha256 sha384 sha3_224 "
            "sha3_256 sha3_384 sha3_512 sha512 shake_128 shake_256"
        ),
        "heapq": _names(
            "heapify heappop heappush heappushpop heapreplace merge nlargest nsmallest"
        ),
        "itertools": _names(
            "accumulate batched chain combinations combinations_with_replacement compress count "
            "cycle dropwhile filterfalse groupby islice pairwise permutations product repeat "
            "starmap takewhile tee zip_longest"
        ),
        "json": _names("JSONDecodeError JSONDecoder JSONEncoder detect_encoding dumps loads"),
        "math": _names(
            "acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh degrees "
            "dist e erf erfc exp exp2 expm1 fabs factorial floor fmod frexp fsum gamma gcd "
            "hypot inf isclose isfinite isinf isnan isqrt lcm ldexp lgamma log log10 log1p "
            "log2 modf nan nextafter perm pi pow prod radians remainder sin sinh sqrt sumprod "
            "tan tanh tau trunc ulp"
        ),
        "operator": _names(
            "abs add and_ attrgetter call concat contains countOf delitem eq floordiv ge "
            "getitem gt iadd iand iconcat ifloordiv ilshift imatmul imod imul index indexOf "
            "inv invert ior ipow irshift is_ is_not isub itemgetter itruediv ixor le "
            "length_hint lshift lt matmul methodcaller mod mul ne neg not_ or_ pos pow rshift "
            "setitem sub truediv truth xor"
        ),
        "random": _names(
            "BPF LOG4 NV_MAGICCONST RECIP_BPF Random SG_MAGICCONST SystemRandom TWOPI "
            "betavariate binomialvariate choice choices expovariate gammavariate gauss "
            "getrandbits lognormvariate normalvariate paretovariate randbytes randint random "
            "randrange sample shuffle triangular uniform vonmisesvariate weibullvariate"
        ),
        "re": _names(
            "A ASCII DEBUG DOTALL I IGNORECASE L LOCALE M MULTILINE Match NOFLAG Pattern "
            "RegexFlag S U UNICODE VERBOSE X compile error escape findall finditer fullmatch "
            "match search split sub subn"
        ),
        "statistics": _names(
            "LinearRegression NormalDist StatisticsError correlation covariance fmean "
            "geometric_mean harmonic_mean linear_regression mean median median_grouped "
            "median_high median_low mode multimode pstdev pvariance quantiles stdev variance"
        ),
        "string": _names(
            "Template ascii_letters ascii_lowercase ascii_uppercase capwords digits hexdigits "
            "octdigits printable punctuation whitespace"
        ),
        "textwrap": _names("TextWrapper dedent fill indent shorten wrap"),
        "time": _names(
            "altzone asctime ctime daylight gmtime localtime mktime monotonic monotonic_ns "
            "perf_counter perf_counter_ns process_time process_time_ns sleep strftime strptime "
            "struct_time thread_time thread_time_ns time time_ns timezone tzname"
        ),
        "typing": _names(
            "AbstractSet Annotated Any AnyStr Callable ClassVar Collection Container Counter "
            "DefaultDict Deque Dict Final FrozenSet Generator Generic Hashable ItemsView "
            "Iterable Iterator KeysView List Literal LiteralString Mapping MappingView "
            "MutableMapping MutableSequence MutableSet NamedTuple Never NoReturn NotRequired "
            "Optional OrderedDict Protocol Required Reversible Self Sequence Set Sized "
            "SupportsAbs SupportsFloat SupportsIndex SupportsInt SupportsRound Text Tuple "
            "TypeAlias TypeGuard TypeVar TypedDict Union ValuesView TYPE_CHECKING cast final "
            "overload"
        ),
        "unicodedata": _names(
            "bidirectional category combining decimal decomposition digit east_asian_width "
            "is_normalized lookup mirrored name normalize numeric unidata_version"
        ),
        "uuid": _names(
            "NAMESPACE_DNS NAMESPACE_OID NAMESPACE_URL NAMESPACE_X500 RESERVED_FUTURE "
            "RESERVED_MICROSOFT RESERVED_NCS RFC_4122 SafeUUID UUID uuid3 uuid4 uuid5"
        ),
        "zlib": _names(
            "DEFLATED DEF_BUF_SIZE DEF_MEM_LEVEL MAX_WBITS ZLIB_RUNTIME_VERSION ZLIB_VERSION "
            "Z_BEST_COMPRESSION Z_BEST_SPEED Z_BLOCK Z_DEFAULT_COMPRESSION Z_DEFAULT_STRATEGY "
            "Z_FILTERED Z_FINISH Z_FIXED Z_FULL_FLUSH Z_HUFFMAN_ONLY Z_NO_COMPRESSION Z_NO_FLUSH "
            "Z_PARTIAL_FLUSH Z_RLE Z_SYNC_FLUSH Z_TREES adler32 compress compressobj crc32 "
            "decompress decompressobj error"
        ),
        "pyrecks.kernel": _names("branch call done fanout halt key"),
    }
)

#: Names of allowed modules that are left out on purpose, with the reason the checker gives.
#: (Names in neither table are simply not listed: the checker says "not on the rule book".)
REFUSED_MODULE_NAMES: Final = MappingProxyType(
    {
        "copy.dispatch_table": "a dict shared by every kernel in the process",
        "dataclasses.make_dataclass": "builds code from strings with exec",
        "decimal.getcontext": "the context is shared by every step on the thread: "
        "use 'with decimal.localcontext() as ctx:'",
        "decimal.setcontext": "the context is shared by every step on the thread: "
        "use 'with decimal.localcontext() as ctx:'",
        "decimal.DefaultContext": "a context object shared by the whole process: "
        "use decimal.localcontext()",
        "decimal.BasicContext": "a context object shared by the whole process: "
        "use decimal.Context(...)",
        "decimal.ExtendedContext": "a context object shared by the whole process: "
        "use decimal.Context(...)",
        "enum.EnumType": "a metaclass: write 'class C(enum.Enum):'",
        "enum.EnumMeta": "a metaclass: write 'class C(enum.Enum):'",
        "functools.update_wrapper": "copies attributes named by strings (assigned=, updated=), "
        "which reads any attribute, __globals__ included",
        "functools.wraps": "calls update_wrapper, which copies attributes named by strings",
        "functools.singledispatch": "evaluates annotation strings (an eval)",
        "functools.singledispatchmethod": "evaluates annotation strings (an eval)",
        "hashlib.file_digest": "reads a file object",
        "hashlib.algorithms_available": "a set shared by every kernel in the process",
        "hashlib.algorithms_guaranteed": "a set shared by every kernel in the process",
        "json.dump": "writes to a file object: use json.dumps",
        "json.load": "reads a file object: use json.loads",
        "random.seed": "reseeds the generator every kernel shares: rng = random.Random(seed)",
        "random.setstate": "changes the generator every kernel shares: rng = random.Random(seed)",
        "random.getstate": "reads the generator every kernel shares: rng = random.Random(seed)",
        "re.purge": "clears the regex cache of the whole process",
        "re.template": "an internal helper",
        "string.Formatter": "Formatter().format('{0.__globals__}', f) reads any attribute",
        "time.tzset": "changes the timezone of the whole process",
        "time.clock_settime": "sets a system clock",
        "time.clock_settime_ns": "sets a system clock",
        "typing.get_type_hints": "evaluates annotation strings (an eval)",
        "typing.ForwardRef": "ForwardRef(...)._evaluate is an eval",
        "typing.get_args": "typing is for annotations only; get_args hands out ForwardRef "
        "objects that evaluate strings",
        "typing.get_origin": "typing is for annotations only",
        "typing.Type": "calling typing.Type[...] creates classes like type(name, bases, ns): "
        "annotate with type[...]",
        "uuid.getnode": "may run ifconfig/ip in a subprocess to find the MAC address",
        "uuid.uuid1": "calls getnode()",
    }
)

#: Builtins a kernel may name.  Every exception class is allowed too (kernels raise and
#: catch them).  ``type`` is a guarded stand-in at run time (one argument only), ``print``
#: writes to the chain log, ``getattr``/``hasattr``/``setattr``/``delattr`` judge the name
#: like an attribute access.
ALLOWED_BUILTINS: Final = _names(
    "abs all any ascii bin bool bytearray bytes callable chr classmethod complex delattr dict "
    "divmod enumerate filter float format frozenset getattr hasattr hash hex id int "
    "isinstance issubclass iter len list map max min next object oct ord pow print property "
    "range repr reversed round set setattr slice sorted staticmethod str sum super tuple "
    "type zip Ellipsis NotImplemented False None True"
)

#: Builtins that are refused with PK201, and the fix each message gives.  The policy's
#: ``forbidden_builtins`` defaults to these names (an operator may forbid more).
FORBIDDEN_BUILTINS: Final = MappingProxyType(
    {
        "open": 'kernels do no I/O: pass the data in as an argument or an "@key" input, and '
        "write results with a SET effect in the return string",
        "eval": "kernels cannot run code from strings: write the code in the kernel, or parse "
        "data with json.loads",
        "exec": "kernels cannot run code from strings: write the code in the kernel",
        "compile": "kernels cannot compile code; for regular expressions use re.compile",
        "__import__": "write an import statement for a module on the allow-list",
        "globals": "pass values explicitly as arguments or build your own dict",
        "locals": "pass values explicitly or build your own dict",
        "vars": "read the attributes you need by name, or use dataclasses.asdict",
        "input": "kernels are not interactive: pass the value as an argument",
        "breakpoint": "debug the kernel with pytest outside Redis (see docs/kernels.md)",
        "help": "read the docs outside the kernel",
        "memoryview": "use bytes or bytearray",
        "exit": "return '' to end the chain, or raise an exception to fail it",
        "quit": "return '' to end the chain, or raise an exception to fail it",
        "copyright": "not available in kernels",
        "credits": "not available in kernels",
        "license": "not available in kernels",
    }
)

#: Dunder attributes that only name things or call ``__init__`` (``super().__init__()``);
#: every other ``__x__`` attribute leads to interpreter internals and is refused (PK301).
SAFE_DUNDER_ATTRIBUTES: Final = _names("__init__ __name__ __qualname__ __doc__")

#: Dunder names a kernel may read: ``if __name__ == "__main__":`` guards and ``__debug__``.
SAFE_DUNDER_NAMES: Final = _names("__name__ __debug__ __doc__")

#: Frame, code, generator, coroutine and traceback internals, plus their Python 2 spellings.
#: Explicit names rather than prefixes, so a user's ``self.f_value`` stays legal.  Refused on
#: every object (PK302), kernel-defined ones included.
FRAME_ATTRIBUTES: Final = _names(
    "f_back f_builtins f_code f_globals f_lasti f_lineno f_locals f_trace f_trace_lines "
    "f_trace_opcodes gi_code gi_frame gi_running gi_suspended gi_yieldfrom cr_await cr_code "
    "cr_frame cr_origin cr_running cr_suspended ag_await ag_code ag_frame ag_running tb_frame "
    "tb_lasti tb_lineno tb_next co_code co_consts co_names co_varnames co_filename co_name "
    "co_firstlineno co_lnotab co_linetable co_freevars co_cellvars co_flags co_qualname "
    "co_exceptiontable co_positions co_lines func_globals func_code func_closure "
    "func_defaults func_dict im_func im_self im_class mro _getframe _current_frames"
)

#: Attributes refused on classes that are not the kernel's own: ABC registration changes
#: ``isinstance`` for every kernel in the process (PK307).
CLASS_REFUSED_ATTRIBUTES: Final = MappingProxyType(
    {
        "register": "ABC registration changes isinstance() for every kernel in the process; "
        "check the types you accept explicitly",
    }
)

#: Attributes handed out only behind a guard: ``str.format``/``format_map`` read attributes
#: of their arguments by the names in the template, so the guard resolves every ``{0.name}``
#: field through the attribute guard (PK304 refuses such templates statically).
WRAPPED_ATTRIBUTES: Final = _names("format format_map")

#: Attributes a kernel may *set* on objects it did not define (by the object's type, named
#: ``module.qualname``).  Everything else a kernel did not define is read-only: modules,
#: classes, functions and library objects are shared by every kernel in the process.
WRITABLE_ATTRIBUTES: Final = MappingProxyType(
    {
        "decimal.Context": _names("prec rounding Emin Emax capitals clamp"),
    }
)

#: Mutable class attributes of rule-book classes that kernels can read (a plain attribute
#: read of a class shared by the whole process): frozen (a read-only mapping) when the
#: sandbox is imported, so ``TextWrapper.unicode_whitespace_trans[32] = "x"`` cannot change
#: every kernel's ``textwrap``.
FROZEN_CLASS_ATTRIBUTES: Final = MappingProxyType(
    {
        "textwrap.TextWrapper": _names("unicode_whitespace_trans"),
    }
)

#: Special methods a kernel class may not define: they run at times the VM does not control
#: (``__del__`` outside any deadline) or change other classes (subclass, class-item and
#: descriptor hooks, metaclass hooks), or hand library code a recipe it follows blindly
#: (``copy.copy`` calls whatever callable ``__reduce__`` returns and updates the ``__dict__``
#: of whatever object that returns: a module proxy, a function) — PK532.
CLASS_HOOKS: Final = _names(
    "__del__ __init_subclass__ __class_getitem__ __set_name__ __prepare__ __instancecheck__ "
    "__subclasscheck__ __subclasshook__ __mro_entries__ __reduce__ __reduce_ex__"
)

#: The special methods of Python's data model (operators, conversions, containers, context
#: managers, iteration, attribute access, copying, ``__post_init__`` of dataclasses): what a
#: kernel class may define or bind by name (``__radd__ = __add__``), less :data:`CLASS_HOOKS`.
SPECIAL_METHODS: Final = _names(
    "__new__ __init__ __post_init__ __repr__ __str__ __bytes__ __format__ __hash__ __bool__ "
    "__lt__ __le__ __eq__ __ne__ __gt__ __ge__ "
    "__getattr__ __getattribute__ __setattr__ __delattr__ __dir__ __get__ __set__ __delete__ "
    "__call__ __len__ __length_hint__ __getitem__ __setitem__ __delitem__ __missing__ "
    "__iter__ __next__ __reversed__ __contains__ "
    "__add__ __sub__ __mul__ __matmul__ __truediv__ __floordiv__ __mod__ __divmod__ __pow__ "
    "__lshift__ __rshift__ __and__ __xor__ __or__ "
    "__radd__ __rsub__ __rmul__ __rmatmul__ __rtruediv__ __rfloordiv__ __rmod__ __rdivmod__ "
    "__rpow__ __rlshift__ __rrshift__ __rand__ __rxor__ __ror__ "
    "__iadd__ __isub__ __imul__ __imatmul__ __itruediv__ __ifloordiv__ __imod__ __ipow__ "
    "__ilshift__ __irshift__ __iand__ __ixor__ __ior__ "
    "__neg__ __pos__ __abs__ __invert__ __complex__ __int__ __float__ __index__ __round__ "
    "__trunc__ __floor__ __ceil__ __enter__ __exit__ "
    "__copy__ __deepcopy__ __getstate__ __setstate__ __getnewargs__ __getnewargs_ex__ "
    "__sizeof__ __fspath__"
)

#: The only dunders a kernel class body may bind (PK533): its protocol methods and the
#: class's own layout (``__slots__``, ``__hash__ = None``, ``__match_args__``, a docstring).
#: Every other dunder is data that the interpreter or library code reads *about* the class
#: and trusts: ``dataclasses`` pastes the keys of ``__annotations__`` into the source code it
#: ``exec``s (and ``__module__`` picks the globals that code runs in), and
#: ``__dataclass_fields__``, ``__qualname__`` or ``__dict__`` would forge what such code reads.
#: An allow-list, so a dunder some library reads tomorrow is refused today.
CLASS_BODY_DUNDERS: Final = (
    _names("__slots__ __hash__ __match_args__ __doc__") | SPECIAL_METHODS
) - CLASS_HOOKS

#: Exceptions a handler may not catch without re-raising: the VM's timeout and shutdown
#: signals derive from them (PK520).  At run time a handler for one of them catches
#: ``Exception`` instead.
CONTROL_EXCEPTIONS: Final = _names("BaseException SystemExit KeyboardInterrupt GeneratorExit")

#: Builtins whose aliases the checker resolves before applying its rules
#: (``t = type; t("X", (), {})`` is PK204, ``_B = BaseException ... except _B:`` is PK520).
ALIASED_BUILTINS: Final = CONTROL_EXCEPTIONS | _names(
    "type object getattr setattr delattr hasattr super"
)

#: The only calls allowed at module level and in class bodies (and as decorators there),
#: each with pure arguments (literals, tuples of them, names of the kernel's constants,
#: functions and classes, and these calls nested).  Anything else would run code when the
#: kernel is loaded, outside its time limit, or create state that survives the call (PK502).
PURE_CONSTRUCTORS: Final = _names(
    "frozenset tuple str bytes int float complex bool range object slice "
    "staticmethod classmethod property "
    "re.compile re.escape "
    "decimal.Decimal fractions.Fraction "
    "datetime.date datetime.datetime datetime.time datetime.timedelta datetime.timezone "
    "collections.namedtuple typing.NamedTuple typing.TypeVar typing.TypedDict "
    "typing.final typing.overload "
    "dataclasses.dataclass dataclasses.field functools.total_ordering "
    "functools.cached_property enum.auto enum.unique enum.member enum.nonmember "
    "string.Template uuid.UUID"
)

#: Values a module-level name (and a kernel class's attribute, and a default argument) may
#: hold once the module body ran, checked by the guard the rewriter appends to every module:
#: immutable values, functions, classes, modules (and tuples and frozensets of these, and
#: whatever an allowed module's proxy hands out).  Types are named ``module.qualname`` so that
#: this module imports nothing; :mod:`pyrecks.vm.guards` resolves them.
IMMUTABLE_TYPES: Final = _names(
    "types.NoneType types.EllipsisType types.NotImplementedType builtins.bool builtins.int "
    "builtins.float builtins.complex builtins.str builtins.bytes builtins.range builtins.slice "
    "builtins.type builtins.staticmethod builtins.classmethod builtins.property "
    "types.FunctionType types.BuiltinFunctionType types.GenericAlias types.UnionType "
    "re.Pattern decimal.Decimal fractions.Fraction datetime.date datetime.time "
    "datetime.timedelta datetime.tzinfo typing.TypeVar string.Template uuid.UUID enum.Enum "
    "functools.cached_property types.MemberDescriptorType types.GetSetDescriptorType "
    "collections._tuplegetter"
)

#: Methods that mutate the container they are called on (lists, dicts, sets, deques): on a
#: module-level name they are PK402.
MUTATING_METHODS: Final = _names(
    "add append appendleft clear difference_update discard extend extendleft insert "
    "intersection_update pop popitem popleft remove reverse rotate setdefault sort "
    "symmetric_difference_update update"
)

#: Functions of allowed modules that mutate the list passed as their first argument.
MUTATING_FUNCTIONS: Final = _names(
    "heapq.heappush heapq.heappop heapq.heapify heapq.heapreplace heapq.heappushpop "
    "bisect.insort bisect.insort_left bisect.insort_right random.shuffle"
)

#: Functions that change state shared by every kernel running in the same VM process (PK404),
#: with the fix.  (They are also left out of :data:`MODULES`, so the run-time proxies lack them.)
MODULE_STATE_FUNCTIONS: Final = MappingProxyType(
    {
        "random.seed": "create your own generator: rng = random.Random(seed); rng.random()",
        "random.setstate": "create your own generator: rng = random.Random(seed)",
        "decimal.setcontext": "use 'with decimal.localcontext() as ctx: ctx.prec = …'",
        "time.tzset": "convert times explicitly with datetime and a fixed timezone",
    }
)

#: Calls whose result differs from run to run (a re-run step may then differ: PK405 warning).
NONDETERMINISTIC: Final = _names(
    "time.time time.time_ns time.monotonic time.monotonic_ns time.perf_counter "
    "time.perf_counter_ns time.process_time time.ctime time.localtime time.gmtime "
    "time.asctime time.strftime datetime.datetime.now datetime.datetime.utcnow "
    "datetime.datetime.today datetime.date.today uuid.uuid1 uuid.uuid4 random.SystemRandom"
)

#: Library functions that change the class or function passed to them (they set attributes
#: on it, or register it in a process-wide table): as decorators of the kernel's own
#: classes and functions they are fine; called on anything else (``dataclasses.dataclass(
#: json.JSONEncoder)``, a module-level class from inside the entry function) they change an
#: object every run of the kernel, or every kernel, shares (PK404).  At run time the sandbox
#: hands out versions that accept only classes the running call defined.
DECORATORS_THAT_CHANGE_THEIR_ARGUMENT: Final = MappingProxyType(
    {
        "dataclasses.dataclass": "it rewrites the class passed to it",
        "functools.total_ordering": "it adds methods to the class passed to it",
        "typing.final": "it sets an attribute on the object passed to it",
        "typing.overload": "it records the function in a registry of the whole process",
    }
)

#: Prefix of the names the rewriter gives its guards; kernels may not use such names.
GUARD_PREFIX: Final = "_pyrecks_"

#: Public attribute names whose verdict depends on the object's type: ``format``/``format_map``
#: (guarded on strings), ``register`` (refused on ABCs) and ``__init__`` (allowed on ``super()``
#: and the kernel's own objects only).  Every other public, non-frame name is allowed on every
#: object, so the rewriter leaves ``obj.name`` plain for it (see :func:`is_plain_attribute`).
TYPE_DEPENDENT_ATTRIBUTES: Final = (
    WRAPPED_ATTRIBUTES | frozenset(CLASS_REFUSED_ATTRIBUTES) | frozenset({"__init__"})
)

#: The guards the rewritten code calls, by role -> name in the kernel's globals.
GUARDS: Final = MappingProxyType(
    {
        "getattr": f"{GUARD_PREFIX}getattr",  # obj.name (read)
        "method": f"{GUARD_PREFIX}method",  # obj.name(...) (read in call position)
        "call": f"{GUARD_PREFIX}call",  # f(...) of a value not known statically
        "write": f"{GUARD_PREFIX}write",  # obj.name = v, del obj.name
        "catch": f"{GUARD_PREFIX}catch",  # except T:
        "module_done": f"{GUARD_PREFIX}module_done",  # end of the module body
        "with": f"{GUARD_PREFIX}with",  # with cm: (a kernel's __exit__ may not swallow)
        "finally": f"{GUARD_PREFIX}finally",  # finally: (may not replace the VM's signals)
        "base": f"{GUARD_PREFIX}base",  # BaseException, by a name kernels cannot shadow
    }
)


def is_dunder(name: str) -> bool:
    """``__x__`` (at least one character between the underscores)."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def is_sunder(name: str) -> bool:
    """``_x_``: names ``enum`` and other class factories reserve; refused like dunders."""
    return (
        len(name) > 2 and name[0] == "_" and name[-1] == "_" and name[1] != "_" and name[-2] != "_"
    )


def is_plain_attribute(name: str) -> bool:
    """Whether reading ``obj.name`` is allowed whatever ``obj`` is.

    True for public names that are neither frame internals nor type-dependent: the rewriter
    compiles such reads as plain attribute reads, the guards answer them without looking at
    the object.  Everything else (``_private``, dunders, frame names,
    :data:`TYPE_DEPENDENT_ATTRIBUTES`) is judged by the object's type at run time.
    """
    return (
        name[:1] != "_" and name not in FRAME_ATTRIBUTES and name not in TYPE_DEPENDENT_ATTRIBUTES
    )


def refused_by_name(name: str) -> bool:
    """Whether ``name`` is refused as an attribute of *any* object, by its spelling alone.

    Dunders outside :data:`SAFE_DUNDER_ATTRIBUTES` and :data:`FRAME_ATTRIBUTES`.  Private
    ``_names`` depend on the object (allowed on the kernel's own), so they are not here.
    """
    return (
        (is_dunder(name) and name not in SAFE_DUNDER_ATTRIBUTES)
        or is_sunder(name)
        or name in FRAME_ATTRIBUTES
    )


def module_names(module: str) -> frozenset[str] | None:
    """The names kernels may use from ``module``; ``None`` for a module the rule book does not
    list (an operator's addition: every public, non-module attribute)."""
    return MODULES.get(module)


def refusal_reason(module: str, name: str) -> str | None:
    """Why ``module.name`` is refused, or ``None`` if the rule book allows it.

    The answer for modules the rule book does not list only covers private names; the
    caller judges "is it a module" itself (that needs an import).
    """
    full = f"{module}.{name}"
    if full in REFUSED_MODULE_NAMES:
        return REFUSED_MODULE_NAMES[full]
    if name.startswith("_"):
        return f"a private name of module {module}: use {module}'s public functions"
    allowed = MODULES.get(module)
    if allowed is not None and name not in allowed:
        return (
            f"not on the rule book's list for module {module} (pure, public functions and "
            "types only; see docs/kernels.md)"
        )
    return None
