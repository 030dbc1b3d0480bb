"""The UCI credit-card data set: loading and validation, the official download, source resolution.

NOTE: the submodules import pandas; import them where needed (training, producer, CLI), never
from the consumer.
"""
