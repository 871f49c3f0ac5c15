"""zramfs-generator's configuration: zram-generator.conf(5), read into devices.

Where this sits: at boot, before any zramfs device exists.  ``zramfs.generator``
(the systemd generator, and the ``--setup-device`` it writes into units) calls
``read_devices`` here; what comes back is plain numbers and paths that the
generator turns into units and the setup turns into ``zramfs swapon`` or
``zramfs mount`` + ``losetup`` + ``mkfs``.  Nothing here touches a device.

The files are zram-generator's, under zramfs's own names, so both can live on
one machine and a zram-generator config copied into them works unchanged::

    {/usr/lib,/usr/local/lib,/etc,/run}/zramfs/zramfs-generator.conf
    {/usr/lib,/usr/local/lib,/etc,/run}/zramfs/zramfs-generator.conf.d/*.conf

Precedence is zram-generator's: only one main file is read, the one in the
last directory of that list that has it; drop-ins are read after it, sorted by
file name over all four directories, and a drop-in in a later directory hides
one of the same name in an earlier one (a link to /dev/null hides it and adds
nothing).  Within the files, a later value of a key wins.

Errors never stop the other devices: a device whose section has a bad value
carries the message in ``Device.errors`` and the setup of that one device
fails with it, the way systemd shows a failed unit.  Unknown keys and
algorithms zramfs lacks are warnings, as in zram-generator.  Values whose
feature zramfs lacks (swap options other than discard) are
``Device.refusals``: that device is not set up, and says why.

``compression-algorithm`` becomes what ``zramfs swapon``/``mount`` take
(``plan_algorithms``): the first algorithm ``--algorithm`` and its
parameters ``--algorithm-params``; each later one a ``--recomp-algorithm
"algo=NAME priority=N [level=N]"``, priorities 1, 2, 3 in list order, as
zram-generator writes them to ``recomp_algorithm``.
"""

import math
import os
import re
from dataclasses import dataclass, field

from allocator import PAGE_SIZE
from zramfs import codecs

__all__ = [
    "CONF_FILE",
    "CONF_DIRS",
    "DEFAULT_ZRAM_SIZE",
    "Device",
    "ExpressionError",
    "Config",
    "locate_fragments",
    "read_config",
    "evaluate",
    "mem_total_mib",
    "is_device_name",
]

CONF_FILE = "zramfs/zramfs-generator.conf"
# Lowest precedence first, as zram-generator's base directories.
CONF_DIRS = ("usr/lib", "usr/local/lib", "etc", "run")

DEFAULT_ZRAM_SIZE = "min(ram / 2, 4096)"
DEFAULT_RESIDENT_LIMIT = "0"
DEFAULT_SWAP_PRIORITY = 100
DEFAULT_OPTIONS = "discard"
# fs-type when a mount-point is given without one (zram-generator's).
DEFAULT_FS_TYPE = "ext2"
# A disksize more than this many times RAM gets zram-generator's warning.
IMPROBABLE_RATIO = 32
# zram's ZRAM_MAX_COMPS is 4: the primary (priority 0) and three secondaries.
MAX_RECOMP_PRIORITY = 3
# Parameters that zram's recompress takes (a recompression run's), not an
# algorithm's: zram-generator writes a secondary's parameters to recompress.
RECOMPRESS_PARAMS = ("type", "threshold", "max_pages", "algo", "priority")
# swapon -o options zramfs swap can honour ("discard" is what it runs).
SWAP_OPTIONS_KEPT = ("discard", "nofail")
SWAP_OPTIONS_WIDENED = ("discard=once", "discard=pages")

MIB = 1 << 20

_SECTION_RE = re.compile(r"zram(0|[1-9][0-9]*)")


class ExpressionError(ValueError):
    """Raised when a zram-size style expression cannot be parsed or evaluated."""


@dataclass
class Device:
    """One ``[zramN]`` section, as read (``resolve`` fills the numbers)."""

    name: str
    host_memory_limit_mib: int | None = None
    zram_size: str | None = None
    zram_resident_limit: str | None = None
    # (algorithm, params) in order: the first compresses, the rest recompress.
    compression_algorithms: list = field(default_factory=list)
    recompression_params: str = ""
    writeback_device: str | None = None
    swap_priority: int = DEFAULT_SWAP_PRIORITY
    mount_point: str | None = None
    fs_type: str | None = None
    options: str = DEFAULT_OPTIONS
    zram_fraction: float | None = None
    # None: not given; ("none",) style is kept as max_zram_size_set + None.
    max_zram_size_mib: int | None = None
    max_zram_size_set: bool = False
    # Filled by resolve().
    disksize: int = 0
    mem_limit: int = 0
    enabled: bool = True
    # Filled by plan_algorithms(): --algorithm-params and --recomp-algorithm.
    algorithm_params: str = ""
    recomp_algorithms: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def is_swap(self):
        return self.mount_point is None and self.fs_type in (None, "swap")

    @property
    def effective_fs_type(self):
        if self.fs_type is not None:
            return self.fs_type
        return "swap" if self.is_swap else DEFAULT_FS_TYPE

    @property
    def algorithm(self):
        """The algorithm zramfs will use: the configured one if zramfs has it, else None (the default)."""
        if self.compression_algorithms:
            name = self.compression_algorithms[0][0]
            if name in codecs.CODECS:
                return name
        return None

    @property
    def refusals(self):
        """Why zramfs cannot set this device up as configured (features it lacks yet)."""
        reasons = []
        if self.is_swap:
            refused = [o for o in swap_options(self.options) if not _swap_option_ok(o)]
            if refused:
                reasons.append(
                    f"options '{self.options}': {', '.join(refused)}: zramfs swap runs "
                    "swapon --discard and takes no other swap option (only "
                    f"{', '.join(SWAP_OPTIONS_KEPT + SWAP_OPTIONS_WIDENED)})"
                )
        return reasons

    @property
    def problems(self):
        """Every reason the setup of this device must fail: errors, then refusals."""
        return self.errors + self.refusals


def is_device_name(name):
    """True for a section name zram-generator accepts: zram0, zram1, ..."""
    return _SECTION_RE.fullmatch(name) is not None


def swap_options(options):
    """A swap device's ``options``, split as swapon -o splits them."""
    return [o.strip() for o in options.split(",") if o.strip()]


def _swap_option_ok(option):
    return option in SWAP_OPTIONS_KEPT or option in SWAP_OPTIONS_WIDENED


@dataclass
class Config:
    """Every device in the files, with the warnings and errors not tied to one device."""

    devices: dict
    files: list
    warnings: list
    errors: list


# -- files ----------------------------------------------------------------------------


def locate_fragments(root="/"):
    """The files to read, in reading order: the main file first, then the drop-ins by name."""
    bases = [os.path.join(root, d) for d in CONF_DIRS]
    dropins = {}
    for base in bases:  # later directories hide same-named files of earlier ones
        d = os.path.join(base, CONF_FILE + ".d")
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name.endswith(".conf") and not name.startswith("."):
                dropins[name] = os.path.join(d, name)
    files = [
        path for _name, path in sorted(dropins.items()) if os.path.realpath(path) != "/dev/null"
    ]
    for base in reversed(bases):
        main = os.path.join(base, CONF_FILE)
        if os.path.exists(main):
            files.insert(0, main)
            break
    return files


def parse_ini(text):
    """systemd.syntax(5): [section], key=value, '#'/';' comments, '\\' continuation.

    Yields (section or None, key, value, line number): key None and value
    None for a section header (a section with no keys still names a device),
    key None and a message as value for a line that is neither.
    """
    section = None
    pending, pending_no = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending:
            line = pending + " " + line
            no = pending_no
            pending = ""
        elif not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending, pending_no = line[:-1].rstrip(), no
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                yield section, None, f"'{line}' is not a [section] header", no
                continue
            section = line[1:-1].strip()
            yield section, None, None, no
            continue
        if "=" not in line:
            yield section, None, f"'{line}' is not key=value", no
            continue
        key, value = line.split("=", 1)
        yield section, key.strip(), value.strip(), no


# -- expressions ----------------------------------------------------------------------

# fasteval's SI suffixes, which zram-generator's zram-size accepts (4k = 4000).
_SI = {
    "p": 1e-12,
    "n": 1e-9,
    "µ": 1e-6,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?P<si>[pnµumkKMGT](?![A-Za-z_]))?"
    r"|(?P<name>[A-Za-z_][A-Za-z_0-9]*)|(?P<op>[-+*/%^(),])|(?P<bad>\S))"
)


def _round_half_away(x):
    # fasteval rounds as Rust's f64::round (2.5 -> 3), not to even as Python.
    return math.copysign(math.floor(abs(x) + 0.5), x)


def _round(*args):
    if len(args) == 1:
        return _round_half_away(args[0])
    modulus, x = args
    return _round_half_away(x / modulus) * modulus


def _log(*args):
    if len(args) == 1:
        return math.log10(args[0])
    base, x = args
    return math.log(x, base)


# name: (function, smallest and largest number of arguments)
_FUNCTIONS = {
    "min": (lambda *a: min(a), 1, None),
    "max": (lambda *a: max(a), 1, None),
    "abs": (abs, 1, 1),
    "int": (lambda x: float(math.trunc(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "round": (_round, 1, 2),
    "log": (_log, 1, 2),
    "e": (lambda: math.e, 0, 0),
    "pi": (lambda: math.pi, 0, 0),
    **{
        f: (getattr(math, f), 1, 1)
        for f in ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh")
    },
}


class _Parser:
    """Recursive descent over fasteval's arithmetic: + - below * / %, below unary -, below ^."""

    def __init__(self, text, variables):
        self.text = text
        self.variables = variables
        self.tokens = []
        self.spellings = []  # each token as written, for messages
        for m in _TOKEN_RE.finditer(text):
            if m.group().strip():
                self.spellings.append(m.group().strip())
            if m["bad"]:
                raise ExpressionError(f"'{text}': unexpected '{m['bad']}'")
            if m["number"]:
                value = float(m["number"]) * _SI.get(m["si"] or "", 1)
                self.tokens.append(("number", value))
            elif m["name"]:
                self.tokens.append(("name", m["name"]))
            elif m["op"]:
                self.tokens.append(("op", m["op"]))
        self.pos = 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else (None, None)

    def found(self):
        return f"'{self.spellings[self.pos]}'" if self.pos < len(self.tokens) else "the end"

    def take(self, op=None):
        tok = self.peek()
        if op is not None and tok != ("op", op):
            found = self.found()
            raise ExpressionError(f"'{self.text}': expected '{op}', found {found}")
        self.pos += 1
        return tok

    def parse(self):
        if not self.tokens:
            raise ExpressionError("expression is empty")
        value = self.sum()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"'{self.text}': unexpected '{self.spellings[self.pos]}'")
        return value

    def sum(self):
        value = self.product()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.take()[1]
            rhs = self.product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def product(self):
        value = self.unary()
        while self.peek() in (("op", "*"), ("op", "/"), ("op", "%")):
            op = self.take()[1]
            rhs = self.unary()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ExpressionError(f"'{self.text}': division by zero")
            else:
                value = value / rhs if op == "/" else math.fmod(value, rhs)
        return value

    def unary(self):
        if self.peek() == ("op", "-"):
            self.take()
            return -self.unary()
        if self.peek() == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() == ("op", "^"):
            self.take()
            return base ** self.unary()  # right-associative
        return base

    def atom(self):
        found = self.found()
        kind, value = self.take()
        if kind == "number":
            return value
        if kind == "op" and value == "(":
            inner = self.sum()
            self.take(")")
            return inner
        if kind == "name":
            if self.peek() == ("op", "("):
                return self.call(value)
            if value in self.variables:
                return float(self.variables[value])
            raise ExpressionError(f"'{self.text}': unknown variable '{value}'")
        raise ExpressionError(f"'{self.text}': expected a number, found {found}")

    def call(self, name):
        if name not in _FUNCTIONS:
            raise ExpressionError(f"'{self.text}': unknown function '{name}'")
        fn, least, most = _FUNCTIONS[name]
        self.take("(")
        args = []
        if self.peek() != ("op", ")"):
            args.append(self.sum())
            while self.peek() == ("op", ","):
                self.take()
                args.append(self.sum())
        self.take(")")
        if len(args) < least or (most is not None and len(args) > most):
            wanted = (
                f"{least}"
                if most == least
                else f"{least} or more"
                if most is None
                else f"{least} to {most}"
            )
            raise ExpressionError(
                f"'{self.text}': {name}() takes {wanted} arguments, got {len(args)}"
            )
        try:
            return float(fn(*args))
        except (ValueError, OverflowError) as e:
            raise ExpressionError(f"'{self.text}': {name}(): {e}") from None


def evaluate(text, variables):
    """Evaluate a zram-size style expression; ``variables`` maps names (``ram``) to numbers."""
    return _Parser(text, variables).parse()


# -- reading --------------------------------------------------------------------------


def mem_total_mib(root="/"):
    """MemTotal of ``ROOT/proc/meminfo`` in whole MiB, zram-generator's ``ram``."""
    path = os.path.join(root, "proc/meminfo")
    with open(path) as f:
        for line in f:
            fields = line.split()
            if fields[:1] == ["MemTotal:"] and len(fields) > 1:
                return int(fields[1]) // 1024
    raise OSError(f"no MemTotal in {path}")


def _optional_mib(key, value):
    if value == "none":
        return None
    if not value.isdigit():
        raise ValueError(f"{key} '{value}' is not a number of MiB or 'none'")
    return int(value)


def _absolute_path(key, value):
    if not value.startswith("/"):
        raise ValueError(f"{key} {value} is not an absolute path")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{key} {value} is not normalized (has '..')")
    return "/" + "/".join(parts)


def _set_key(dev, key, value):
    """One key of a [zramN] section; raises ValueError with the reason for a bad value."""
    if key in ("host-memory-limit", "memory-limit"):  # memory-limit: the old name
        dev.host_memory_limit_mib = _optional_mib(key, value)
    elif key == "zram-size":
        dev.zram_size = value
    elif key == "zram-resident-limit":
        dev.zram_resident_limit = value
    elif key == "compression-algorithm":
        dev.compression_algorithms, dev.recompression_params = [], ""
        for word in value.split():
            algo, params = word, ""
            if "(" in word:
                algo, params = word.split("(", 1)
                params = params.removesuffix(")").replace(",", " ")
            if algo:
                dev.compression_algorithms.append((algo, params))
            else:
                dev.recompression_params = params
    elif key == "writeback-device":
        dev.writeback_device = _absolute_path(key, value)
    elif key == "swap-priority":
        try:
            prio = int(value)
        except ValueError:
            raise ValueError(f"swap-priority '{value}' is not a number") from None
        if not -1 <= prio <= 32767:
            raise ValueError(f"swap-priority {prio} is not between -1 and 32767")
        dev.swap_priority = prio
    elif key == "mount-point":
        dev.mount_point = _absolute_path(key, value)
    elif key == "fs-type":
        dev.fs_type = value
    elif key == "options":
        dev.options = value
    elif key == "zram-fraction":
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"zram-fraction '{value}' is not a number") from None
        if fraction < 0:
            raise ValueError(f"zram-fraction {value} is negative")
        dev.zram_fraction = fraction
    elif key == "max-zram-size":
        dev.max_zram_size_mib = _optional_mib(key, value)
        dev.max_zram_size_set = True
    else:
        dev.warnings.append(f"unknown key {key}, ignoring")


def _run_directive(program, variables):
    """``set!var = program``: run it with /bin/sh, read its output as an expression."""
    # Imported here: zramfs.system imports this module, and the daemon
    # (which never runs a directive) keeps all it imports locked.
    import subprocess

    out = subprocess.run(
        ["/bin/sh", "-c", "--", program],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    return evaluate(out.stdout.strip(), variables)


def _size(dev, key, text, default, variables):
    """An expression in MiB -> bytes, rounded up to whole pages (as zram's disksize_store)."""
    if text is None:
        mib = default
    else:
        try:
            mib = evaluate(text, variables)
        except ExpressionError as e:
            raise ValueError(f"{key} {e}") from None
        if mib < 0:
            raise ValueError(f"{key} '{text}' = {mib:g} is negative")
    size = int(mib * MIB)
    return -(-size // PAGE_SIZE) * PAGE_SIZE


def resolve(dev, ram_mib, variables):
    """Fill disksize, mem_limit and enabled from the expressions (errors go to dev.errors)."""
    if dev.host_memory_limit_mib is not None and dev.host_memory_limit_mib < ram_mib:
        dev.enabled = False
        dev.warnings.append(
            f"system has too much memory ({ram_mib} MiB), host-memory-limit is "
            f"{dev.host_memory_limit_mib} MiB, not creating it"
        )
        return
    variables = {**variables, "ram": ram_mib}
    try:
        if dev.zram_fraction is not None or dev.max_zram_size_set:
            # The old keys, which override zram-size.
            fraction = 0.5 if dev.zram_fraction is None else dev.zram_fraction
            mib = int(fraction * ram_mib)
            if not dev.max_zram_size_set:
                mib = min(mib, 4096)
            elif dev.max_zram_size_mib is not None:
                mib = min(mib, dev.max_zram_size_mib)
            dev.disksize = _size(dev, "zram-size", None, mib, variables)
        else:
            dev.disksize = _size(dev, "zram-size", dev.zram_size, min(ram_mib / 2, 4096), variables)
            # zram-generator's warning for a size in the wrong unit (bytes
            # or KiB where MiB are meant), with its integer ratio.
            ratio = dev.disksize // (ram_mib * MIB) if ram_mib else 0
            if ratio > IMPROBABLE_RATIO:
                dev.warnings.append(
                    f"zram-size ({dev.zram_size or DEFAULT_ZRAM_SIZE} = {dev.disksize} bytes) "
                    f"would need an improbable compression ratio of {ratio} with {ram_mib} MiB "
                    "of RAM; units may be wrong (zram-size is in MiB)"
                )
        dev.mem_limit = _size(dev, "zram-resident-limit", dev.zram_resident_limit, 0, variables)
    except ValueError as e:
        dev.errors.append(str(e))


def _algorithm_params(name, params, where):
    """level and dict of ``params`` (zram-generator's ``NAME(k=v,...)``, commas
    made spaces) as zram's algorithm_params text for NAME, checked against
    it; raises ValueError with the reason."""
    try:
        request = codecs.parse_algorithm_params(params)
        if request.algo not in (None, name):
            raise codecs.InvalidCodecParamsError(f"algo={request.algo} is not {name}")
        # The level now; a dict= file is read by the setup, as zram reads it.
        codecs.get_codec(name, level=request.level)
    except codecs.InvalidCodecParamsError as e:
        raise ValueError(f"compression-algorithm {where}: {e}") from None
    words = [] if request.level is None else [f"level={request.level}"]
    if request.dict_path is not None:
        words.append(f"dict={request.dict_path}")
    return request.priority, " ".join(words)


def plan_algorithms(dev):
    """``compression-algorithm`` as the setup's options: ``algorithm_params``
    for the first algorithm, ``recomp_algorithms`` for the others, with
    warnings and errors where zram-generator would warn or fail.

    zram-generator writes the first to ``comp_algorithm`` and, if the kernel
    took it, its parameters to ``algorithm_params``; each later one to
    ``recomp_algorithm`` as ``algo=NAME priority=N`` (N its place in the
    list), warning and going on where the kernel refuses one.  Its later
    algorithms' parameters go to ``recompress``, which the kernel refuses
    before the device is initialised, so none of them takes effect; zramfs
    gives a ``level`` to that algorithm instead (what the config asks for),
    refuses a ``dict`` (its recomp_algorithm takes none) and warns about
    the rest.  The global recompression parameters, ``(...)`` without a
    name, zram-generator keeps but never applies; zramfs says so.
    """
    algos = dev.compression_algorithms
    if algos:
        name, params = algos[0]
        spelled = f"{name}({params.replace(' ', ',')})" if params else name
        if name not in codecs.CODECS:
            dev.warnings.append(
                f"compression-algorithm {name} is not one of zramfs's "
                f"({', '.join(codecs.CODECS)}), using {codecs.DEFAULT_ALGORITHM}"
                + (f"; its parameters ({params}) are not used" if params else "")
            )
        elif params:
            try:
                priority, dev.algorithm_params = _algorithm_params(name, params, spelled)
                if priority != 0:
                    raise ValueError(
                        f"compression-algorithm {spelled}: priority={priority} "
                        "names a recompression algorithm, not the first"
                    )
            except ValueError as e:
                dev.errors.append(str(e))
    for priority, (name, params) in enumerate(algos[1:], 1):
        spelled = f"{name}({params.replace(' ', ',')})" if params else name
        if name not in codecs.CODECS:
            dev.warnings.append(
                f"recompression algorithm {name} is not one of zramfs's "
                f"({', '.join(codecs.CODECS)}), not using it"
            )
            continue
        if priority > MAX_RECOMP_PRIORITY:
            dev.warnings.append(
                f"recompression algorithm {spelled}: zram takes {MAX_RECOMP_PRIORITY} "
                f"recompression algorithms (priorities 1-{MAX_RECOMP_PRIORITY}), "
                f"not using priority {priority}"
            )
            continue
        words = params.split()
        ignored = [w for w in words if w.partition("=")[0] in RECOMPRESS_PARAMS]
        if ignored:
            dev.warnings.append(
                f"recompression algorithm {spelled}: {' '.join(ignored)} not applied: "
                "recompress parameters, which zram-generator writes to recompress before "
                "the device exists (the kernel refuses them); recompression runs when "
                "something writes to recompress"
            )
        kept = " ".join(w for w in words if w not in ignored)
        try:
            _priority, algo_params = _algorithm_params(name, kept, spelled)
            if "dict=" in algo_params:
                # zramfs's --recomp-algorithm (recomp_algorithm) takes a level only.
                raise ValueError(
                    f"compression-algorithm {spelled}: zramfs takes no dict= for a "
                    "recompression algorithm (only level=)"
                )
        except ValueError as e:
            dev.errors.append(str(e))
            continue
        dev.recomp_algorithms.append(
            " ".join(filter(None, [f"algo={name}", f"priority={priority}", algo_params]))
        )
    if dev.recompression_params:
        dev.warnings.append(
            f"compression-algorithm ({dev.recompression_params.replace(' ', ',')}): global "
            "recompression parameters are not applied (zram-generator keeps them but never "
            "applies them either); recompression runs when something writes to recompress"
        )


def check_swap_options(dev):
    """Warn where a swap device's ``options`` ask for less discard than
    zramfs swap does (``Device.refusals`` has the options it cannot take)."""
    if not dev.is_swap:
        return
    options = swap_options(dev.options)
    if not options or any(o in SWAP_OPTIONS_WIDENED for o in options):
        dev.warnings.append(
            f"options '{dev.options}': zramfs swap always runs swapon --discard (both "
            "once and pages): it is how freed swap slots give their memory back"
        )


def read_config(root="/", *, ram_mib=None, extra_devices=()):
    """Read every file, resolve every device; ``extra_devices`` are added with defaults."""
    files = locate_fragments(root)
    config = Config(devices={}, files=files, warnings=[], errors=[])
    if ram_mib is None:
        ram_mib = mem_total_mib(root)
    variables = {"ram": ram_mib}
    for path in files:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            config.errors.append(f"/{os.path.relpath(path, root)}: {e.strerror}")
            continue
        shown = "/" + os.path.relpath(path, root)  # the path as on the machine
        for section, key, value, no in parse_ini(text):
            where = f"{shown}:{no}"
            if key is None and value is None:
                if is_device_name(section):
                    config.devices.setdefault(section, Device(section))
                else:
                    config.warnings.append(f"{where}: ignoring section [{section}]")
                continue
            if key is None:
                config.errors.append(f"{where}: {value}")
                continue
            if section is None:
                if key.startswith("set!"):
                    try:
                        variables[key[4:]] = _run_directive(value, variables)
                    except ExpressionError as e:
                        config.errors.append(f"{where}: {key}: {value}: output {e}")
                else:
                    config.warnings.append(
                        f"{where}: invalid outside-of-section key {key}, ignoring"
                    )
                continue
            if not is_device_name(section):
                continue  # warned at its header
            dev = config.devices.setdefault(section, Device(section))
            try:
                _set_key(dev, key, value)
            except ValueError as e:
                dev.errors.append(f"{where}: {e}")
    for name in extra_devices:
        config.devices.setdefault(name, Device(name))
    for dev in config.devices.values():
        dev.errors[:0] = config.errors
        resolve(dev, ram_mib, variables)
        plan_algorithms(dev)
        check_swap_options(dev)
    return config
