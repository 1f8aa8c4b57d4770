"""Pruning: the method registry (``registry``, torch-free), the methods (``methods``), their kernels
(``magnitude``, ``calibrated``, ``search``, ``ccds``, ``targets``), the mask format (``masks``) and the
mask stage (``run``). Nothing is imported here, so ``prunemem.prune.registry`` stays torch-free.
"""
