import os

def main(:
    return {}
