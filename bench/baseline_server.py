# The physical limit safepy is measured against: an HTTP server with no
# sandbox at all that imports numpy and pandas once and forks a child per
# request, which runs the script's main() and answers with the same envelope
# as safepy ({"result": ..., "stdout": "..."}). No namespaces, cgroups,
# seccomp, limits or output caps: whatever safepy costs beyond this is the
# price of its isolation. For benchmarks on loopback only; never expose it.
#
#   python3 -I bench/baseline_server.py [--port N] [--preload numpy pandas]
#
# Prints "listening PORT" on stdout once it accepts connections.
import argparse
import http.server
import json
import os
import signal
import socketserver
import sys


def run_child(source, write_fd):
    """In the forked child: runs main() with fd 1 captured, writes the envelope."""
    read_out, write_out = os.pipe()
    os.dup2(write_out, 1)
    os.close(write_out)
    sys.stdout = open(1, "w", closefd=False)
    status = 200
    try:
        module = {"__name__": "script"}
        exec(compile(source, "script.py", "exec"), module)
        value = module["main"]()
        sys.stdout.flush()
        os.close(1)
        captured = b""
        while chunk := os.read(read_out, 1 << 16):
            captured += chunk
        body = json.dumps({"result": value, "stdout": captured.decode("utf-8", "replace")})
    except BaseException as error:  # the baseline reports, it does not classify
        status = 422
        body = json.dumps({"error": repr(error)})
    data = b"%d\n" % status + body.encode()
    view = memoryview(data)
    while view:
        view = view[os.write(write_fd, view):]
    os._exit(0)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle's algorithm
    # holds the body back until the client's delayed ACK (40 ms on loopback),
    # and the baseline would measure that timer instead of its own cost.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.reply(200, b'{"status": "ready"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        source = json.loads(self.rfile.read(length))["script"]
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            run_child(source, write_fd)
        os.close(write_fd)
        chunks = []
        while chunk := os.read(read_fd, 1 << 16):
            chunks.append(chunk)
        os.close(read_fd)
        os.waitpid(pid, 0)
        status, _, body = b"".join(chunks).partition(b"\n")
        self.reply(int(status or b"500"), body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--preload", nargs="*", default=["numpy", "pandas"])
    args = parser.parse_args()
    for name in args.preload:
        __import__(name)
    server = Server(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("listening", server.server_address[1], flush=True)
    server.serve_forever()


main()
