def helper():
    return {}
