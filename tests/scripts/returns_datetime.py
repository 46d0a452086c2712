import datetime


def main():
    return [datetime.datetime(2020, 1, 1)]
