import concurrent.futures
import multiprocessing


def square(value):
    return value * value


def produce(queue, lock, counter):
    with lock:
        counter.value += 1
    queue.put("from child")


def main():
    with multiprocessing.Pool(2) as pool:
        squares = pool.map(square, range(6))
    queue = multiprocessing.Queue()
    lock = multiprocessing.Lock()
    counter = multiprocessing.Value("i", 0)
    child = multiprocessing.Process(target=produce, args=(queue, lock, counter))
    child.start()
    message = queue.get(timeout=10)
    child.join()
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        cubes = list(executor.map(square, [7, 8]))
    # The other start methods exec a fresh interpreter, which cannot import
    # the script (it is no file): hand them a builtin.
    started = {}
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as other:
            started[method] = other.apply(abs, (-9,))
    return {"squares": squares, "message": message, "counter": counter.value, "exitcode": child.exitcode,
            "executor": cubes, "started": started}
