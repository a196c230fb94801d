"""The fake Picamera2 and our uses of Picamera2 checked against the real package.

The real picamera2 needs libcamera, which is only on a Raspberry Pi, so it is
never imported: its source is read from the wheel on PyPI (a zip) and parsed
with ``ast``. Set PI_CLASSIFIER_PICAMERA2_WHEEL to use another wheel.
"""

from __future__ import annotations

import ast
import concurrent.futures
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fakes" / "picamera2.py"
SCANNED = (
    REPO / "pi_classifier" / "sources" / "picamera2.py",
    REPO / "pi_classifier" / "displays" / "drm.py",
)
DOWNLOAD = ".venv/bin/pip download --no-deps picamera2==0.3.38 -d .cache/wheels"

# Fake class -> (real module in the wheel, real class).
COUNTERPARTS = {
    "FakePicamera2": ("picamera2/picamera2.py", "Picamera2"),
    "FakeRequest": ("picamera2/request.py", "CompletedRequest"),
    "Preview": ("picamera2/picamera2.py", "Preview"),
    "Platform": ("picamera2/platform.py", "Platform"),
}
DRM_PREVIEW = ("picamera2/previews/drm_preview.py", "DrmPreview")
# Dunder methods whose signature matters because our code relies on them.
CHECKED_DUNDERS = {"FakePicamera2": ("__init__", "__enter__", "__exit__")}
# The names our modules give Picamera2 objects (leading underscores dropped).
RECEIVERS = {
    "picam2": "Picamera2",
    "request": "CompletedRequest",
    "picamera2_class": "Picamera2",
}
# What the modules must be found using, so that a renamed variable cannot
# silently hide every call from this test.
ESSENTIAL = {
    "Picamera2.__init__",
    "Picamera2.global_camera_info",
    "Picamera2.create_video_configuration",
    "Picamera2.configure",
    "Picamera2.stream_configuration",
    "Picamera2.start",
    "Picamera2.start_preview",
    "Picamera2.capture_request",
    "Picamera2.cancel_all_and_flush",
    "Picamera2.close",
    "Picamera2.set_overlay",
    "CompletedRequest.make_array",
    "CompletedRequest.get_metadata",
    "CompletedRequest.release",
    "Preview.DRM",
}
# Messages the fake raises that come from libcamera's C++ bindings, not from
# picamera2's Python source, and where they come from.
NOT_FROM_PICAMERA2 = {
    "Failed to acquire camera: Device or resource busy": (
        "libcamera's Camera.acquire() raises std::system_error(EBUSY)"
    ),
}


@dataclass
class Signature:
    """One function's parameters, as written in the source."""

    kind: str
    params: list[tuple[str, str | None]]
    keyword_only: list[tuple[str, str | None]]
    varargs: bool
    varkw: bool

    def names(self) -> set[str]:
        return {name for name, _ in self.params + self.keyword_only}

    def required(self) -> list[str]:
        return [name for name, default in self.params if default is None]


@dataclass
class ClassApi:
    """The methods and attributes one class defines."""

    name: str
    methods: dict[str, Signature] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)

    def has(self, member: str) -> bool:
        return member in self.methods or member in self.attributes


def wheel_path() -> Path:
    override = os.environ.get("PI_CLASSIFIER_PICAMERA2_WHEEL")
    if override:
        path = Path(override)
        if not path.is_file():
            pytest.fail(
                f"PI_CLASSIFIER_PICAMERA2_WHEEL is {override}, which is not a file",
                pytrace=False,
            )
        return path

    def version(path: Path) -> tuple[int, ...]:
        numbers = re.findall(r"\d+", path.name.split("-")[1])
        return tuple(int(number) for number in numbers)

    wheels = sorted((REPO / ".cache" / "wheels").glob("picamera2-*.whl"), key=version)
    if not wheels:
        pytest.fail(
            "the picamera2 wheel this test reads is missing from .cache/wheels; "
            f"download it from the repository root with: {DOWNLOAD}",
            pytrace=False,
        )
    return wheels[-1]


@pytest.fixture(scope="module")
def wheel_sources() -> dict[str, str]:
    """Every Python file of the real picamera2 wheel, by its path in the wheel."""
    with zipfile.ZipFile(wheel_path()) as archive:
        return {
            name: archive.read(name).decode("utf-8")
            for name in archive.namelist()
            if name.startswith("picamera2/") and name.endswith(".py")
        }


def _default_text(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


def _kind(function: ast.FunctionDef) -> str | None:
    """The kind of a method from its decorators; None for ones to skip."""
    kind = "method"
    for decorator in function.decorator_list:
        name = ast.unparse(decorator)
        if name in ("overload", "typing.overload") or name.endswith(".setter"):
            return None
        if name in ("staticmethod", "classmethod"):
            kind = name
        elif name in ("property", "classproperty"):
            kind = "property"
    return kind


def _signature(function: ast.FunctionDef, kind: str) -> Signature:
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [
        (arg.arg, _default_text(default))
        for arg, default in zip(positional, defaults, strict=True)
    ]
    if kind != "staticmethod":
        params = params[1:]
    keyword_only = [
        (arg.arg, _default_text(default))
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    return Signature(kind, params, keyword_only, args.vararg is not None,
                     args.kwarg is not None)


def _self_attributes(function: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(function):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        for target in targets:
            for item in ast.walk(target):
                if (
                    isinstance(item, ast.Attribute)
                    and isinstance(item.value, ast.Name)
                    and item.value.id == "self"
                ):
                    names.add(item.attr)
    return names


def class_api(source: str, class_name: str) -> ClassApi:
    """Read the methods and attributes of one class from Python source."""
    tree = ast.parse(source)
    node = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name),
        None,
    )
    assert node is not None, f"class {class_name} not found"
    api = ClassApi(class_name)
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            api.attributes |= _self_attributes(item)
            kind = _kind(item)
            if kind is not None and item.name not in api.methods:
                api.methods[item.name] = _signature(item, kind)
            elif kind is None and any(
                ast.unparse(d).endswith(".setter") for d in item.decorator_list
            ):
                continue
        elif isinstance(item, ast.Assign):
            api.attributes |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            api.attributes.add(item.target.id)
    return api


@pytest.fixture(scope="module")
def real(wheel_sources) -> dict[str, ClassApi]:
    apis = {}
    for path, name in [*COUNTERPARTS.values(), DRM_PREVIEW]:
        apis[name] = class_api(wheel_sources[path], name)
    return apis


@pytest.fixture(scope="module")
def fake() -> dict[str, ClassApi]:
    source = FAKE.read_text(encoding="utf-8")
    return {name: class_api(source, name) for name in COUNTERPARTS}


def _public(name: str, fake_class: str) -> bool:
    return not name.startswith("_") or name in CHECKED_DUNDERS.get(fake_class, ())


def _compare(where: str, real_name: str, fake: Signature, real: Signature) -> list[str]:
    """Say how a fake method's signature departs from the real one."""
    problems = []
    if fake.kind != real.kind:
        problems.append(f"{where} is a {fake.kind}, the real one a {real.kind}")
    if len(fake.params) > len(real.params):
        problems.append(
            f"{where} takes {len(fake.params)} parameters, the real {real_name} "
            f"only {len(real.params)}"
        )
    for index, (mine, theirs) in enumerate(zip(fake.params, real.params, strict=False)):
        if mine != theirs:
            problems.append(
                f"{where} parameter {index + 1} is {_show(mine)}, in the real "
                f"{real_name} it is {_show(theirs)}"
            )
    real_keywords = dict(real.keyword_only)
    for name, default in fake.keyword_only:
        if real_keywords.get(name, "<missing>") != default:
            problems.append(f"{where} keyword-only {name!r} differs from {real_name}")
    if fake.varargs and not real.varargs:
        problems.append(f"{where} takes *args, the real {real_name} does not")
    if fake.varkw and not real.varkw:
        problems.append(f"{where} takes **kwargs, the real {real_name} does not")
    return problems


def _show(param: tuple[str, str | None]) -> str:
    name, default = param
    return name if default is None else f"{name}={default}"


def test_the_fake_has_the_real_names_parameters_and_defaults(fake, real):
    problems = []
    for fake_class, (_, real_class) in COUNTERPARTS.items():
        mine, theirs = fake[fake_class], real[real_class]
        for name, signature in mine.methods.items():
            if not _public(name, fake_class):
                continue
            where = f"{fake_class}.{name}"
            if name not in theirs.methods:
                problems.append(f"{where}: the real {real_class} has no method {name}")
                continue
            problems += _compare(
                where, f"{real_class}.{name}", signature, theirs.methods[name]
            )
        for name in sorted(mine.attributes):
            if _public(name, fake_class) and not theirs.has(name):
                problems.append(
                    f"{fake_class}.{name}: the real {real_class} has no attribute "
                    f"{name}"
                )
    assert not problems, "the fake departs from picamera2:\n" + "\n".join(problems)


@dataclass
class Use:
    """One use of the Picamera2 API found in our modules."""

    where: str
    owner: str
    member: str
    call: bool = False
    on_class: bool = False
    positional: int = 0
    keywords: tuple[str, ...] = ()
    spread: bool = False

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.member}"


def _terminal(node: ast.expr) -> str | None:
    """The last name of an expression: ``self._picam2`` gives ``picam2``."""
    if isinstance(node, ast.Name):
        return node.id.lstrip("_")
    if isinstance(node, ast.Attribute):
        return node.attr.lstrip("_")
    return None


def _call_use(node: ast.Call, where: str, owner: str, member: str, on_class: bool):
    return Use(
        where=where,
        owner=owner,
        member=member,
        call=True,
        on_class=on_class,
        positional=sum(not isinstance(arg, ast.Starred) for arg in node.args),
        keywords=tuple(kw.arg for kw in node.keywords if kw.arg is not None),
        spread=any(isinstance(arg, ast.Starred) for arg in node.args)
        or any(kw.arg is None for kw in node.keywords),
    )


def scan(path: Path) -> list[Use]:
    """Find every call and attribute use on Picamera2 objects in one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    uses = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and _terminal(node.func) == "picamera2_class":
            uses.append(_call_use(node, where, "Picamera2", "__init__", False))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = _terminal(node.func.value)
            if receiver in RECEIVERS and not node.func.attr.startswith("__"):
                on_class = receiver == "picamera2_class"
                uses.append(_call_use(
                    node, where, RECEIVERS[receiver], node.func.attr, on_class
                ))
        elif isinstance(node, ast.Attribute) and id(node) not in called:
            receiver = _terminal(node.value)
            if node.attr.startswith("__"):
                continue
            if receiver == "Preview":
                uses.append(Use(where, "Preview", node.attr))
            elif receiver in RECEIVERS:
                uses.append(Use(where, RECEIVERS[receiver], node.attr,
                                on_class=receiver == "picamera2_class"))
    return uses


@pytest.fixture(scope="module")
def uses() -> list[Use]:
    return [use for path in SCANNED for use in scan(path)]


def _check_call(use: Use, signature: Signature, real_name: str) -> list[str]:
    problems = []
    if signature.kind == "property":
        problems.append(f"{use.where}: calls {use.label}, a property in {real_name}")
    if use.on_class and signature.kind == "method" and use.member != "__init__":
        problems.append(f"{use.where}: calls {use.label} on the class, but it "
                        "needs an instance")
    if use.positional > len(signature.params) and not signature.varargs:
        problems.append(
            f"{use.where}: passes {use.positional} positional arguments to "
            f"{use.label}, which takes {len(signature.params)}"
        )
    for keyword in use.keywords:
        if keyword not in signature.names() and not signature.varkw:
            problems.append(
                f"{use.where}: passes {keyword}= to {use.label}, which has no such "
                "parameter"
            )
    given = {name for name, _ in signature.params[: use.positional]} | set(use.keywords)
    missing = [name for name in signature.required() if name not in given]
    if missing and not use.spread:
        problems.append(f"{use.where}: {use.label} needs {', '.join(missing)}")
    return problems


def test_our_modules_call_picamera2_as_it_really_is(uses, real):
    problems = []
    for use in uses:
        api = real[use.owner]
        if not api.has(use.member):
            problems.append(f"{use.where}: {use.label} does not exist in picamera2")
        elif use.call and use.member not in api.methods:
            problems.append(f"{use.where}: calls {use.label}, which is not a method")
        elif use.call:
            problems += _check_call(use, api.methods[use.member], use.label)
    assert not problems, "picamera2 would break on:\n" + "\n".join(problems)


def test_preview_keywords_reach_the_drm_preview_it_builds(uses, real):
    drm_preview = real["DrmPreview"].methods["__init__"]
    problems = [
        f"{use.where}: start_preview passes {keyword}=, which DrmPreview() lacks"
        for use in uses
        if use.label == "Picamera2.start_preview"
        for keyword in use.keywords
        if keyword not in drm_preview.names()
    ]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_every_essential_use(uses):
    found = {use.label for use in uses}
    missing = sorted(ESSENTIAL - found)
    assert not missing, (
        f"the scan found no use of {', '.join(missing)} in "
        f"{', '.join(str(p.relative_to(REPO)) for p in SCANNED)}; the modules must "
        "call the Picamera2 object picam2, its requests request and its class "
        "picamera2_class for this test to check them"
    )


def test_the_fake_implements_everything_our_modules_use(uses, fake):
    by_real = {real_class: name for name, (_, real_class) in COUNTERPARTS.items()}
    problems = sorted({
        f"{use.where}: {use.label} is used but {by_real[use.owner]} lacks "
        f"{use.member}, so the unit tests do not exercise it"
        for use in uses
        if not fake[by_real[use.owner]].has(use.member)
        and not (use.member == "__init__" and use.owner == "Picamera2")
    })
    assert not problems, "\n".join(problems)


def _string_fragments(node: ast.expr) -> list[str]:
    """The literal text pieces of a message expression."""
    return [
        item.value
        for item in ast.walk(node)
        if isinstance(item, ast.Constant) and isinstance(item.value, str)
    ]


def _raised_messages(source: str) -> list[tuple[int, str]]:
    messages = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
            continue
        if _terminal(node.exc.func) not in ("RuntimeError", "ValueError"):
            continue
        for argument in node.exc.args[:1]:
            messages += [(node.lineno, text) for text in _string_fragments(argument)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and _terminal(node.targets[0]) == "cause":
            messages += [(node.lineno, t) for t in _string_fragments(node.value)]
    return messages


def test_the_fake_raises_the_real_error_messages(wheel_sources):
    real_strings = [
        item.value
        for text in wheel_sources.values()
        for item in ast.walk(ast.parse(text))
        if isinstance(item, ast.Constant) and isinstance(item.value, str)
    ]
    messages = _raised_messages(FAKE.read_text(encoding="utf-8"))
    assert len(messages) > 20
    problems = [
        f"tests/fakes/picamera2.py:{line}: {text!r} is not in picamera2's source"
        for line, text in messages
        if text.strip()
        and text not in NOT_FROM_PICAMERA2
        and not any(text in real for real in real_strings)
    ]
    assert not problems, "\n".join(problems)


def test_a_capture_timeout_is_concurrent_futures_timeout_error(wheel_sources):
    job = ast.parse(wheel_sources["picamera2/job.py"])
    imports = {
        alias.name
        for node in ast.walk(job)
        if isinstance(node, ast.ImportFrom) and node.module == "concurrent.futures"
        for alias in node.names
    }
    assert {"Future", "CancelledError"} <= imports, (
        "picamera2's Job no longer waits on a concurrent.futures.Future, so a "
        "capture_request(wait=...) timeout may not be TimeoutError any more"
    )
    result_calls = [
        node
        for node in ast.walk(job)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "result"
        and [kw.arg for kw in node.keywords] == ["timeout"]
    ]
    assert result_calls, "Job.get_result no longer calls Future.result(timeout=...)"
    # What the source catches and the fake raises are the same class.
    assert concurrent.futures.TimeoutError is TimeoutError
