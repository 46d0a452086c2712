def main():
    return "not json: a str"
