import no_such_module_anywhere


def main():
    return {}
