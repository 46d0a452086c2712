# safepy's in-jail runner. It is embedded in the safepy binary and started as
#   python3 -I -B -u -c <this file> MODE RESULT_FD JOB_FD
# inside the jail. MODE is "run" or "check". The job arrives on JOB_FD (see
# lib/job.hpp: the script, main's arguments, stdin, the files handed in and
# the output caps); the outcome leaves on RESULT_FD, never on stdout:
#   b"S"                         written first: the jail worked and Python started
#   b"C"                         the script compiled (check mode: and parsed);
#                                no code of the script has run before this
#   b"M"                         run mode: main() was found and accepts the
#                                arguments given (none, or args); it is called next
#   b"F" TAG LENGTHS PATH DATA   after main() returned: one per entry under
#                                /tmp/out, TAG b"f" a file (DATA its bytes) or
#                                b"k" an entry skipped (DATA why); LENGTHS are
#                                the path's (u32 LE) and the data's (u64 LE)
#   b"R" KIND b"\n" BODY         written once at the end
# The host accepts a record only in the phase the runner sends it in
# (syntax_error before "C", no_main, bad_main, bad_args and input_error before
# "M", ok, invalid_result and output_files after it), so a script writing on
# the descriptor cannot pass its failure off as an earlier one.
# KIND is one of ok, syntax_error, no_main, bad_main, bad_args, input_error,
# exception, exit, memory, invalid_result, output_files; BODY is the result's
# JSON text for ok, else a message.
# Everything this file needs is bound before the script runs, so a script that
# patches modules or replaces sys.stdout cannot change what is reported.
import sys
import os


def _safepy_runner():
    import json
    import stat
    import struct
    import types

    # Needed only on some paths, and slow to import (inspect, traceback and
    # linecache are most of a cold run's start): bound here when they are
    # loaded already (warm runs: the template imported them), else imported
    # when needed. Imported after the script ran, they are whatever the
    # script left in sys.modules: that can change how its own run is
    # described, nothing more.
    inspect_module = sys.modules.get("inspect")
    format_exception = getattr(sys.modules.get("traceback"), "format_exception", None)
    line_cache = getattr(sys.modules.get("linecache"), "cache", None)

    write = os.write
    read = os.read
    close = os.close
    encoder = json.JSONEncoder(allow_nan=False, check_circular=True)
    encode = encoder.encode
    is_instance = isinstance
    stdout_object = sys.stdout
    stderr_object = sys.stderr
    # What collecting /tmp/out after main() uses, bound before the script runs.
    calls = types.SimpleNamespace(open=os.open, listdir=os.listdir, stat=os.stat, fstat=os.fstat, read=os.read,
                                  close=os.close, kill=os.kill, waitpid=os.waitpid, getpid=os.getpid,
                                  pack=struct.pack, is_dir=stat.S_ISDIR, is_link=stat.S_ISLNK, is_file=stat.S_ISREG,
                                  write_all=None)

    mode = sys.argv[1]
    result_fd = int(sys.argv[2])
    job_fd = int(sys.argv[3])
    os.set_inheritable(result_fd, False)
    write(result_fd, b"S")
    get_pid = os.getpid
    exit_now = os._exit
    runner_pid = get_pid()

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[write(fd, view):]

    calls.write_all = write_all

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
            formatter = format_exception
            if formatter is None:
                import traceback
                formatter = traceback.format_exception
                # Before linecache looks for a file named script.py in /tmp.
                lines = script_text.splitlines(True)
                sys.modules["linecache"].cache["script.py"] = (len(script_text), None, lines, "script.py")
            lines = formatter(type(error), error, frames)
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
        chunk = read(job_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    close(job_fd)
    job = _read_job(b"".join(chunks))
    del chunks
    source = job["script"]

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
            import ast  # check mode runs none of the script: importing now is safe

            found = _defines_main(ast.parse(source))
        except (RecursionError, MemoryError, SyntaxError, ValueError):
            send("syntax_error", "SyntaxError: the script is nested too deeply to check")
            return
        mark(b"C")
        send("ok" if found else "no_main", "{}")
        return

    mark(b"C")

    try:
        _place_inputs(job)
    except OSError as error:
        flush_output()
        send("input_error", "Input could not be placed in the run: " + describe(error))
        return

    text = script_text = source.decode("utf-8", "replace")
    module = types.ModuleType("script")
    module.__file__ = "script.py"
    # Tracebacks show the script's lines: from linecache's cache when it is
    # loaded, else through the loader once linecache is (it asks for it).
    module.__loader__ = types.SimpleNamespace(get_source=lambda name: text)
    if line_cache is not None:
        line_cache["script.py"] = (len(text), None, text.splitlines(True), "script.py")
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
    args = job["args"]
    try:
        problem = None
        if not _plainly_callable(main, args, types.FunctionType):
            if inspect_module is None:
                import inspect as inspect_module
            problem = _argument_problem(inspect_module.signature(main), args, inspect_module.Parameter)
    except TypeError:
        problem = "main() cannot be called with keyword arguments"
    except ValueError:
        problem = None  # a callable Python cannot describe: call it and see
    if problem is not None:
        flush_output()
        if args is None:
            send("bad_main", "main() must be callable without arguments")
        else:
            send("bad_args", problem)
        return

    mark(b"M")
    try:
        value = main() if args is None else main(**args)
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
    over = _return_outputs(job, calls, result_fd, get_pid() == runner_pid)
    if over is not None:
        send("output_files", over)
        return
    send("ok", body.encode("ascii", "backslashreplace"))


def _read_job(data):
    # lib/job.hpp: a magic, then records of tag, name length, data length, name, data.
    import json
    import struct

    magic = b"SPYJOB1\n"
    if not data.startswith(magic):
        raise ValueError("not a safepy job")
    job = {"script": b"", "args": None, "stdin": None, "files": [], "outputs": (0, 0)}
    view = memoryview(data)
    at = len(magic)
    while at < len(data):
        tag = data[at:at + 1]
        name_bytes, data_bytes = struct.unpack_from("<IQ", data, at + 1)
        at += 13
        name = bytes(view[at:at + name_bytes])
        at += name_bytes
        body = view[at:at + data_bytes]
        at += data_bytes
        if tag == b"s":
            job["script"] = bytes(body)
        elif tag == b"a":
            job["args"] = json.loads(bytes(body))
        elif tag == b"i":
            job["stdin"] = body
        elif tag == b"f":
            job["files"].append((name.decode("utf-8"), body))
        elif tag == b"o":
            entries, total = bytes(body).split()
            job["outputs"] = (int(entries), int(total))
    return job


def _place_inputs(job):
    # Before any of the script's code: stdin, the files handed in (read-only,
    # in the working directory) and /tmp/out for the files the run returns.
    if job["stdin"] is not None:
        fd = os.memfd_create("stdin", os.MFD_CLOEXEC)
        view = job["stdin"]
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 0)
        os.close(fd)
        job["stdin"] = None
    for path, content in job["files"]:
        parts = path.split("/")
        if any(part in ("", ".", "..") for part in parts) or path.startswith("/"):
            raise OSError(22, "invalid input path " + repr(path))
        directory = "."
        for part in parts[:-1]:
            directory += "/" + part
            try:
                os.mkdir(directory, 0o755)
            except FileExistsError:
                pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        try:
            view = content
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    job["files"] = []
    if job["outputs"][0] > 0:
        os.mkdir("out", 0o755)


_VAR_POSITIONAL, _VAR_KEYWORD = 0x04, 0x08  # code flags CO_VARARGS, CO_VARKEYWORDS


def _plainly_callable(main, args, function_type):
    # True when main is a plain Python function that main() or main(**args)
    # certainly binds to, read off its code object; False sends the caller
    # to inspect.signature, which also finds the words for what is wrong.
    if type(main) is not function_type or any(
            name in main.__dict__ for name in ("__wrapped__", "__signature__", "_partialmethod", "__partialmethod__")):
        return False  # inspect.signature would describe another callable
    code = main.__code__
    given = args or {}
    positional = code.co_varnames[:code.co_argcount]
    keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    defaults = len(main.__defaults__ or ())
    keyword_defaults = main.__kwdefaults__ or {}
    required = positional[:len(positional) - defaults] if defaults else positional
    if any(name not in given for name in required):
        return False
    if any(name not in given and name not in keyword_defaults for name in keyword_only):
        return False
    if any(name in given for name in positional[:code.co_posonlyargcount]):
        return False
    named = set(positional[code.co_posonlyargcount:]) | set(keyword_only)
    return bool(code.co_flags & _VAR_KEYWORD) or all(name in named for name in given)


def _argument_problem(signature, args, kinds):
    # Why main cannot be called as main() or main(**args), naming the
    # arguments; None when it can. `kinds` is inspect.Parameter, bound
    # before the script ran.
    given = args or {}
    try:
        signature.bind(**given)
        return None
    except TypeError:
        pass
    parameters = signature.parameters.values()
    takes_any = any(p.kind == kinds.VAR_KEYWORD for p in parameters)
    named = {p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    unexpected = [name for name in given if name not in named and not takes_any]
    missing = [p.name for p in parameters
               if p.default is kinds.empty and p.name not in given
               and p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    positional = [p.name for p in parameters if p.kind == kinds.POSITIONAL_ONLY and p.name in given]
    parts = []
    if unexpected:
        parts.append("does not accept the argument(s) " + ", ".join(repr(n) for n in unexpected))
    if positional:
        parts.append("takes " + ", ".join(repr(n) for n in positional) + " by position only")
    if missing:
        parts.append("needs the argument(s) " + ", ".join(repr(n) for n in missing) + ", which were not given")
    if not parts:
        parts.append("cannot be called with the arguments given")
    text = "main() " + "; ".join(parts)
    return text if len(text) <= 2000 else text[:2000] + "..."


def _return_outputs(job, calls, result_fd, original):
    # After main() returned: every other process of the run ends first (the
    # runner is pid 1 of the run's PID namespace), so that none changes
    # /tmp/out while it is read; then each entry goes to the host as an F
    # record, without following links. The host checks the caps again.
    # Returns why the caps were exceeded, or None. Descriptors are left to
    # the process's end, which follows.
    max_entries, max_bytes = job["outputs"]
    if not original or max_entries == 0:
        return None
    nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        root = calls.open("out", nofollow | os.O_DIRECTORY)
        if not calls.listdir(root):
            return None
    except OSError:
        return None  # the script removed it: nothing to return
    if calls.getpid() == 1:
        try:
            calls.kill(-1, 9)
        except OSError:
            pass
        while True:
            try:
                calls.waitpid(-1, 0)
            except ChildProcessError:
                break

    def send(tag, path, data):
        name = path.encode("utf-8")
        calls.write_all(result_fd, b"F" + tag + calls.pack("<IQ", len(name), len(data)) + name + data)

    def skip(path, why):
        send(b"k", path, why.encode("utf-8", "backslashreplace"))

    entries = 0
    total = 0
    pending = [(root, "", 0)]
    while pending:
        directory, prefix, depth = pending.pop()
        subdirectories = []
        for name in sorted(calls.listdir(directory)):
            entries += 1
            if entries > max_entries:
                return "Output limit exceeded: /tmp/out holds more than " + str(max_entries) + " entries (output_files)"
            path = prefix + name
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                skip(path.encode("utf-8", "backslashreplace").decode("ascii", "replace"), "the name is not valid UTF-8")
                continue
            try:
                info = calls.stat(name, dir_fd=directory, follow_symlinks=False)
                if calls.is_dir(info.st_mode):
                    if depth >= 32:
                        skip(path, "nested too deeply")
                    else:
                        fd = calls.open(name, nofollow | os.O_DIRECTORY, dir_fd=directory)
                        subdirectories.append((fd, path + "/", depth + 1))
                    continue
                if calls.is_link(info.st_mode):
                    skip(path, "a symbolic link (never followed)")
                    continue
                if not calls.is_file(info.st_mode):
                    skip(path, "not a regular file")
                    continue
                if info.st_nlink != 1:
                    skip(path, "a hard link (the file has other names)")
                    continue
                fd = calls.open(name, nofollow | os.O_NONBLOCK, dir_fd=directory)
            except OSError as error:
                skip(path, "cannot be read: " + str(error))
                continue
            opened = calls.fstat(fd)
            if not calls.is_file(opened.st_mode) or opened.st_nlink != 1 or opened.st_ino != info.st_ino:
                skip(path, "changed while it was read")
                calls.close(fd)
                continue
            room = max_bytes - total
            chunks = []
            size = 0
            while size <= room:
                chunk = calls.read(fd, min(1 << 20, room + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            calls.close(fd)
            if size > room:
                return ("Output limit exceeded: the files in /tmp/out hold more than " + str(max_bytes) +
                        " bytes (output_files_bytes)")
            total += size
            send(b"f", path, b"".join(chunks))
        calls.close(directory)
        pending.extend(reversed(subdirectories))
    return None


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
