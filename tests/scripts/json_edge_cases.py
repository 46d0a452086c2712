def main():
    return {
        "big": 2**200,
        "negative_big": -(3**100),
        "float": 1.5e300,
        "tuple": (1, 2),
        "nested": {"a": [{"b": [[], {}]}]},
        "unicode": "caf\u00e9 \u20ac \U0001F600",
        "quote": "\"\\\n\t",
        "int_key": {1: "one"},
    }
