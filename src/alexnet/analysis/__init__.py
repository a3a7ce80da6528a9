"""The paper's figures and experiments, built on the public API of the other packages.

* :mod:`.relu_tanh` - Figure 1: ReLU versus tanh on CIFAR-10 (epochs to 25% training error).
* :mod:`.filters` - Figure 3: the conv1 kernels as an image grid, one block per tower.
* :mod:`.features`, :mod:`.neighbors` - Figure 4 (right): fc7 features and exact,
  streaming nearest-neighbour retrieval.
* :mod:`.panels` - Figure 4 (left): images with their top-5 predictions as bars.
* :mod:`.ablations` - section 3/4 claims: what each trick is worth, one change at a time.
* :mod:`.commands` - the CLI (``experiment``, ``filters``, ``features``, ``neighbors``).
"""
