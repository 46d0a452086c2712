# safepy's in-jail runner. It is embedded in the safepy binary and started as
#   python3 -I -B -u -c <this file> MODE RESULT_FD SCRIPT_FD
# inside the jail. MODE is "run" or "check". The script's source arrives on
# SCRIPT_FD; the outcome leaves on RESULT_FD, never on stdout:
#   b"S"                         written first: the jail worked and Python started
#   b"C"                         the script compiled (check mode: and parsed);
#                                no code of the script has run before this
#   b"M"                         run mode: main() was found and takes no
#                                arguments; it is called next
#   b"R" KIND b"\n" BODY         written once at the end
# The host accepts a record only in the phase the runner sends it in
# (syntax_error before "C", no_main and bad_main before "M", ok and
# invalid_result after it), so a script writing on the descriptor cannot pass
# its failure off as an earlier one.
# KIND is one of ok, syntax_error, no_main, bad_main, exception, exit, memory,
# invalid_result; BODY is the result's JSON text for ok, else a message.
# Everything this file needs is bound before the script runs, so a script that
# patches modules or replaces sys.stdout cannot change what is reported.
import sys
import os


def _safepy_runner():
    import ast
    import inspect
    import json
    import linecache
    import traceback
    import types

    write = os.write
    read = os.read
    close = os.close
    encoder = json.JSONEncoder(allow_nan=False, check_circular=True)
    encode = encoder.encode
    format_exception = traceback.format_exception
    is_instance = isinstance
    stdout_object = sys.stdout
    stderr_object = sys.stderr

    mode = sys.argv[1]
    result_fd = int(sys.argv[2])
    script_fd = int(sys.argv[3])
    os.set_inheritable(result_fd, False)
    write(result_fd, b"S")
    get_pid = os.getpid
    exit_now = os._exit
    runner_pid = get_pid()

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[write(fd, view):]

    def send(kind, body):
        if get_pid() != runner_pid:
            # A process the script forked came back through the runner: only
            # the original reports; the copy ends like any child process.
            flush_output()
            exit_now(0 if kind == "ok" else 1)
        if is_instance(body, str):
            body = body.encode("utf-8", "backslashreplace")
        write_all(result_fd, b"R" + kind.encode("ascii") + b"\n" + body)

    def mark(phase):
        # A copy the script forked at import time comes back here too: only the
        # original marks its phases.
        if get_pid() == runner_pid:
            write(result_fd, phase)

    def flush_output():
        # The script may have replaced sys.stdout; flush both its object and
        # the original so that nothing printed before the end is lost.
        for stream in (sys.stdout, sys.stderr, stdout_object, stderr_object):
            try:
                stream.flush()
            except BaseException:
                pass

    def describe(error):
        try:
            text = str(error)
        except BaseException:
            text = "<unprintable>"
        name = type(error).__name__
        if len(text) > 2000:
            text = text[:2000] + "..."
        return name + ": " + text if text else name

    def print_traceback(error):
        # Leave out the runner's own frames at the top of the traceback.
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename == "<string>":
            frames = frames.tb_next
        try:
            lines = format_exception(type(error), error, frames)
            text = "".join(lines)
        except BaseException:
            text = describe(error) + "\n"
        flush_output()
        try:
            write_all(2, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def report_failure(error, where):
        print_traceback(error)
        flush_output()
        if is_instance(error, SystemExit):
            send("exit", "Script called sys.exit(" + repr(error.code)[:200] + ") " + where)
        elif is_instance(error, MemoryError):
            send("memory", "MemoryError " + where)
        else:
            send("exception", describe(error) + " (" + where + ")")

    chunks = []
    while True:
        chunk = read(script_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    close(script_fd)
    source = b"".join(chunks)

    try:
        code = compile(source, "script.py", "exec", dont_inherit=True)
    except SyntaxError as error:
        line = error.lineno if error.lineno is not None else 0
        send("syntax_error", "SyntaxError: " + str(error.msg) + " (line " + str(line) + ")")
        return
    except ValueError as error:
        send("syntax_error", "SyntaxError: " + str(error))
        return
    except (RecursionError, MemoryError):
        # CPython's parser gives up on deep nesting with either of these.
        send("syntax_error", "SyntaxError: the script is nested too deeply to compile")
        return

    if mode == "check":
        try:
            found = _defines_main(ast.parse(source))
        except (RecursionError, MemoryError, SyntaxError, ValueError):
            send("syntax_error", "SyntaxError: the script is nested too deeply to check")
            return
        mark(b"C")
        send("ok" if found else "no_main", "{}")
        return

    mark(b"C")

    text = source.decode("utf-8", "replace")
    linecache.cache["script.py"] = (len(text), None, text.splitlines(True), "script.py")
    module = types.ModuleType("script")
    module.__file__ = "script.py"
    sys.modules["script"] = module
    try:
        exec(code, module.__dict__)
    except BaseException as error:
        report_failure(error, "while importing the script")
        return

    main = module.__dict__.get("main")
    if not callable(main):
        flush_output()
        send("no_main", "Script must contain a main() function")
        return
    try:
        inspect.signature(main).bind()
    except TypeError:
        flush_output()
        send("bad_main", "main() must be callable without arguments")
        return
    except ValueError:
        pass

    mark(b"M")
    try:
        value = main()
    except BaseException as error:
        report_failure(error, "in main()")
        return
    flush_output()

    if not is_instance(value, (dict, list, tuple)):
        send("invalid_result", "main() returned " + type(value).__name__ + ", not a dict or a list")
        return
    try:
        body = encode(value)
    except BaseException as error:
        send("invalid_result", describe(error))
        return
    send("ok", body.encode("ascii", "backslashreplace"))


def _defines_main(tree):
    # A top-level binding of the name main: def, async def, class, assignment
    # or import, also inside top-level if/try/with/for/while blocks.
    import ast

    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "main":
                return True
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name) == "main" for alias in node.names):
                return True
            continue
        blocks = [getattr(node, field, None) for field in ("body", "orelse", "finalbody", "handlers")]
        blocks = [block for block in blocks if isinstance(block, list)]
        heads = [getattr(node, field, None) for field in ("target", "items", "targets", "value")]
        for part in (heads if blocks else [node]):
            for child in ast.walk(part) if isinstance(part, ast.AST) else _walk_all(part):
                if isinstance(child, ast.Name) and child.id == "main" and isinstance(child.ctx, ast.Store):
                    return True
        for block in blocks:
            pending.extend(block)
    return False


def _walk_all(parts):
    import ast

    for part in parts or ():
        if isinstance(part, ast.AST):
            yield from ast.walk(part)


def _safepy_main():
    try:
        _safepy_runner()
    except BaseException:
        # The runner itself failed (for example the script closed the result
        # descriptor): exit non-zero so the host reports an error, never a result.
        os._exit(70)
    os._exit(0)


# The warm template (template.py) is appended to this file and calls
# _safepy_main in each prepared child instead.
if not globals().get("_SAFEPY_TEMPLATE"):
    _safepy_main()
