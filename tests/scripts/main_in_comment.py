# def main():
#     return {}
def helper():
    return {}
