main = {"not": "callable"}
