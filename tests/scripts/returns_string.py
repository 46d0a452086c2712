def main():
    return "just a string"
