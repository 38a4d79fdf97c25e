"""The README's Python example ("From Python"), as a file:

    python python/examples/quickstart.py

It creates ./shoal-py (3 dimensions) in the current directory, writes two
records and prints the nearest product to [1, 0, 0]: apple ("price" makes
it a product: the index's domain rules detect it from the field names).
"""
import numpy as np, shoal
db = shoal.open("./shoal-py", dimensions=3)  # a directory, s3://bucket/prefix or memory://name
db.upsert(["apple", "flu"], np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.1]], dtype=np.float32), [{"price": 3}, {"symptoms": "fever"}])
print(db.search([1.0, 0.0, 0.0], k=1, filter={"domain": "product"}, consistency="strong"))
db.close()
