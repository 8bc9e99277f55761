"""KFP component and pipeline signatures derived from settings dataclasses.

KFP reads a component's interface from its function: the parameters through
``inspect.signature``, their descriptions from the docstring's ``Args:``, and, for a
lightweight component, the function's source text through ``inspect.getsource`` (it is embedded
in the compiled YAML and run in the task's container). So a signature derived from dataclasses
has to exist as source text. :func:`with_settings` writes it: it takes a stub whose parameters
are the artifacts and wiring that belong to the stage's door alone, appends one flat parameter
per setting (name, type, default and description from the dataclass), and compiles the result
under a file name registered with :mod:`linecache`, where ``inspect`` finds it::

    @with_settings(TrainConfig, Launch)
    def train(dataset: Input[Dataset], finetuned_model: Output[Model]) -> str:
        '''Fine-tune ...

        Args:
            dataset: Tokenized splits from preprocess.
            finetuned_model: Output: the best checkpoint.
        '''
        values = dict(locals())
        ...  # settings_from(TrainConfig, values)

The body sees every parameter in ``locals()``; :func:`~kftune.settings.fields.settings_from`
turns them back into the dataclasses.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import textwrap
from collections.abc import Callable, Iterable

from kftune.settings.catalog import Setting, settings_of

_ARGS_INDENT = " " * 8


def _parameter_source(setting: Setting) -> str:
    return f"{setting.name}: {setting.type.__name__} = {setting.default!r}"


def _docstring(doc: str, settings: list[Setting]) -> str:
    """``doc`` with a line per setting added at the end of its ``Args:`` section."""
    lines = textwrap.dedent(doc).strip("\n").splitlines()
    added = [f"{_ARGS_INDENT}{s.name}: {s.help}" for s in settings]
    if "    Args:" not in lines:
        lines += ["", "    Args:"]
    start = lines.index("    Args:") + 1
    end = start
    while end < len(lines) and (lines[end].startswith(_ARGS_INDENT) or not lines[end].strip()):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    lines[end:end] = added
    return "\n".join(lines)


def with_settings(*groups, omit: Iterable[str] = ()) -> Callable:
    """Decorator: the stub with one more parameter per setting of ``groups`` (dataclasses, or
    instances whose values become the defaults), but those named in ``omit``, as a function that
    has source text."""

    def decorate(stub: Callable) -> Callable:
        settings = [s for s in settings_of(*groups) if s.name not in set(omit)]
        source = textwrap.dedent(inspect.getsource(stub))
        tree = ast.parse(source).body[0]
        if not isinstance(tree, ast.FunctionDef):
            raise TypeError(f"{stub.__name__}: with_settings decorates a function")
        taken = {a.arg for a in tree.args.args}
        clash = taken & {s.name for s in settings}
        if clash:
            raise TypeError(f"{stub.__name__}: parameters {sorted(clash)} are also settings")
        args = tree.args
        defaults = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
        params = []
        for arg, default in zip(args.args, defaults, strict=True):
            text = ast.get_source_segment(source, arg)
            params.append(text if default is None else f"{text} = {ast.get_source_segment(source, default)}")
        params += [_parameter_source(s) for s in settings]
        returns = f" -> {ast.get_source_segment(source, tree.returns)}" if tree.returns else ""
        body = tree.body
        doc = ast.get_docstring(tree, clean=False) or ""
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        body_lines = source.splitlines()[body[0].lineno - 1:body[-1].end_lineno]
        docstring = _docstring(doc, settings).replace('"""', r"\"\"\"")
        text = "\n".join([
            f"def {stub.__name__}(",
            *(f"    {p}," for p in params),
            f"){returns}:",
            f'    """{docstring.strip()}\n    """',
            *body_lines,
        ]) + "\n"
        filename = f"<kftune settings: {stub.__module__}.{stub.__qualname__}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        namespace = dict(stub.__globals__)
        # a stub defined inside a function (a pipeline builder) reads its variables: keep them
        namespace.update({name: cell.cell_contents
                          for name, cell in zip(stub.__code__.co_freevars, stub.__closure__ or (), strict=True)})
        # dont_inherit: not this module's `from __future__ import annotations`, which would leave KFP strings
        exec(compile(text, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - our own source
        function = namespace[stub.__name__]
        function.__module__ = stub.__module__
        function.__qualname__ = stub.__qualname__
        function.settings = settings
        function.settings_groups = groups
        return function

    return decorate


def settings_task(component, values: dict, **arguments):
    """A pipeline task of ``component`` (made from a :func:`with_settings` function) with
    ``arguments`` (artifacts, wiring) and its settings taken from the pipeline's run parameters
    ``values``."""
    settings = {s.name: values[s.name] for s in component.python_func.settings if s.name in values}
    return component(**arguments, **settings)
