import threading


def main():
    results = []
    workers = [threading.Thread(target=lambda i=i: results.append(i)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sorted(results)
