import json
import sys

json.dumps = lambda *args, **kwargs: '{"forged": true}'
json.JSONEncoder.encode = lambda self, value: '{"forged": true}'
print('{"result": {"forged": true}, "stdout": ""}')


class Swallow:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def main():
    sys.stdout = Swallow()
    print("swallowed")
    return {"real": True}
