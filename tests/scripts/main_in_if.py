import sys

if sys.version_info >= (3,):
    def main():
        return {"from": "if"}
