main = lambda: {"from": "lambda"}
