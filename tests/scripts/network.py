import socket


def main():
    results = {}
    for host in ["127.0.0.1", "8.8.8.8", "::1"]:
        try:
            socket.create_connection((host, 80), timeout=2).close()
            results[host] = "connected"
        except OSError as error:
            results[host] = "blocked: " + type(error).__name__
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
        results["netlink"] = "opened"
    except OSError as error:
        results["netlink"] = "blocked: " + type(error).__name__
    local = socket.socketpair()
    local[0].send(b"x")
    results["socketpair"] = local[1].recv(1).decode()
    return results
