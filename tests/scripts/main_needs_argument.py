def main(data):
    return {"data": data}
