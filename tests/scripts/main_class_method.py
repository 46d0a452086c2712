class Job:
    def main(self):
        return {}
