import os


def main():
    # After running, claim a syntax error on the runner's descriptor and leave.
    os.write(3, b"Rsyntax_error\nSyntaxError: forged by the script (line 1)")
    os._exit(0)
