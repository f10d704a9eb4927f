"""Reusable code of the RNA next-k-mer pipeline with the Quixer quantum transformer.

Modules (one obvious place for each idea):

- ``common``     one-line user errors, logging, atomic writes, hashes, seeds, devices
- ``fasta``      streaming FASTA reading, input validation, normalisation, split groups
- ``windows``    k-mer windows, group splits, the stage-1 directory (write and read)
- ``ncbi``       the NCBI E-utilities client and the resumable downloader (stage 0)
- ``encoding``   lambeq k-mer circuits, exact and qiskit-aer backends (stage 2)
- ``quantize``   weighted k-means into tokens (stage 3)
- ``data``       token datasets the trainers read (stage 3 and classical-benchmark tokens)
- ``model``      the Quixer LCU + QSVT statevector model in torch
- ``baselines``  LSTM / Transformer / FNet and the uniform / unigram / n-gram references
- ``training``   the one training loop: metrics, checkpoints, resume, DDP
- ``report``     the results table and plots
"""
