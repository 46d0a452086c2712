SOURCE = """
def main():
    return {}
"""
