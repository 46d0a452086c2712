import subprocess


def main():
    subprocess.Popen(["/bin/sleep", "987.654"], start_new_session=True)
    return {"started": True}
